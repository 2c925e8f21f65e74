"""Parallel sampling from a host process (ComfyUI): N worker processes joined in one torch.distributed group, each
holding the transformer, run every transformer call of the host's pipeline together (docs/parallel.md, from ComfyUI).

The host keeps everything else (text encoder, VAE, scheduler, CFG): per step it sends the model inputs to every
worker and gets the prediction back from rank 0. Workers are plain `python -m models.parallel_workers` processes
(not multiprocessing spawn: that would re-run the host's main script), connected over a loopback
multiprocessing.connection with a random key. Interrupt: the host sends it to every worker, the workers agree on
it before the next block (models.parallel.AgreedInterrupt) and answer "interrupted". A worker that dies or fails
makes the whole pool fail with its message; the pool is then killed, never left half-alive, and the next prompt
starts a new one. No ComfyUI import.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Client, Listener, wait
from pathlib import Path

import torch
from torch import nn

from .transformer_options import NO_OPTIONS, TransformerOptions

PACK_ROOT = Path(__file__).resolve().parent.parent
AUTHKEY_ENV = "EASYANIMATE_WORKER_AUTHKEY"


class WorkerError(RuntimeError):
    """A parallel worker failed, died or did not answer; the pool is gone."""


@dataclass(frozen=True)
class PoolSpec:
    model_path: str
    precision: str
    weight_storage: str | None
    fp8_mode: str
    devices: tuple[str, ...]
    sp: int | None = None  # None: every rank CFG parallelism leaves
    cfg_parallel: bool = False


def parse_devices(text: str) -> tuple[str, ...]:
    """'cuda:0, cuda:1' → ('cuda:0', 'cuda:1'); all CUDA (NCCL) or all CPU (gloo), each CUDA index present."""
    devices = tuple(d.strip() for d in text.replace(";", ",").split(",") if d.strip())
    if len(devices) < 2:
        raise ValueError(f"parallel sampling needs at least two devices, e.g. 'cuda:0,cuda:1'; got {text!r}")
    kinds = set()
    for name in devices:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"{name!r} is not a device name; use cuda:0, cuda:1, ... (or cpu for testing)") from None
        if device.type == "cuda" and (device.index is None or device.index >= torch.cuda.device_count()):
            raise ValueError(
                f"{name}: name a present CUDA device with its index (this machine has "
                f"{torch.cuda.device_count()}: cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"{name}: parallel sampling runs on CUDA devices (NCCL) or the CPU (gloo)")
        kinds.add(device.type)
    if len(kinds) > 1:
        raise ValueError(f"mix of CUDA and CPU devices {devices}: use only CUDA devices (or only cpu for testing)")
    return devices


def _send(connection, message) -> None:
    """Plain pickle (tensors copied into the message): torch's own reducers would share storage through file
    descriptors, which needs a multiprocessing parent these processes do not have. Loopback, keyed connection."""
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(connection):
    return pickle.loads(connection.recv_bytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerPool:
    """The worker processes of one PoolSpec; `call` runs one transformer call on all of them."""

    def __init__(self, spec: PoolSpec, start_timeout: float = 1800.0, log=print):
        self.spec, self.log, self.alive, self._call_id = spec, log, False, 0
        self.interrupted_ranks: list[int] = []  # workers that stopped inside the last call on an interrupt
        authkey = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=authkey)
        config = {"spec": asdict(spec), "host": list(self._listener.address), "rendezvous_port": _free_port()}
        env = dict(os.environ, **{AUTHKEY_ENV: authkey.hex()})
        world = len(spec.devices)
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "models.parallel_workers", json.dumps({**config, "rank": rank})],
                cwd=PACK_ROOT,
                env=env,
            )
            for rank in range(world)
        ]
        self.connections: list = [None] * world
        try:
            self._accept(start_timeout)
            self._collect(("ready",), start_timeout)  # every worker has joined the group and loaded its weights
        except BaseException:
            self.close()
            raise
        self.alive = True
        log(f"EasyAnimate parallel workers ready on {', '.join(spec.devices)}")

    def _accept(self, timeout: float) -> None:
        accepted: queue.Queue = queue.Queue()

        def accept_all():
            for _ in self.processes:
                try:
                    connection = self._listener.accept()
                except OSError:  # listener closed while waiting
                    return
                accepted.put(connection)

        threading.Thread(target=accept_all, daemon=True).start()
        deadline = time.monotonic() + timeout
        while None in self.connections:
            self._check_processes(self.connections)
            try:
                connection = accepted.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise WorkerError(f"parallel workers did not connect within {timeout:.0f} s") from None
                continue
            _, rank = _receive(connection)
            self.connections[rank] = connection

    def _check_processes(self, waiting) -> None:
        for rank, process in enumerate(self.processes):
            code = process.poll()
            if code is not None and waiting[rank] is None:
                raise WorkerError(
                    f"parallel worker {rank} ({self.spec.devices[rank]}) exited with code {code}; "
                    "see the console above for its message"
                )

    def _collect(self, expected: tuple[str, ...], timeout: float | None, interrupt=None):
        """Each worker's reply (kind, value); fails the pool on an error, a death or a timeout."""
        replies: list = [None] * len(self.processes)
        by_connection = {id(c): rank for rank, c in enumerate(self.connections)}
        deadline = None if timeout is None else time.monotonic() + timeout
        interrupted = None
        while None in replies:
            if interrupt is not None and interrupted is None:  # checked first: Cancel reaches the workers at once
                try:
                    interrupt()
                except BaseException as error:  # noqa: BLE001 - handed to every worker, re-raised below
                    interrupted = error
                    deadline = time.monotonic() + 120.0  # the workers stop at their next block
                    for connection in self.connections:
                        with contextlib.suppress(OSError):  # a dead worker is reported by the checks below
                            _send(connection, ("interrupt", self._call_id))
            pending = [c for rank, c in enumerate(self.connections) if replies[rank] is None]
            for connection in wait(pending, timeout=0.1):
                rank = by_connection[id(connection)]
                try:
                    replies[rank] = _receive(connection)
                except (EOFError, OSError):
                    replies[rank] = ("error", "its connection closed (the process died)")
                if replies[rank][0] == "error":
                    self.close()
                    raise WorkerError(f"parallel worker {rank} ({self.spec.devices[rank]}) failed: {replies[rank][1]}")
            self._check_processes(replies)
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise WorkerError(f"parallel workers did not answer within the time limit (waiting for {expected})")
        self.interrupted_ranks = [rank for rank, reply in enumerate(replies) if reply[0] == "interrupted"]
        unexpected = [r for r in replies if r[0] not in expected + ("interrupted",)]
        if unexpected:
            self.close()
            raise WorkerError(f"parallel workers answered {unexpected[0][0]!r}, expected {expected}")
        if interrupted is not None:
            raise interrupted
        return replies

    def call(self, inputs: dict, interrupt=None):
        """Run one transformer call; returns rank 0's (prediction on the CPU, whether TeaCache computed the step)."""
        if not self.alive:
            raise WorkerError("this parallel worker pool has stopped; queue the prompt again to start a new one")
        self._call_id += 1
        for rank, connection in enumerate(self.connections):
            try:
                _send(connection, ("call", self._call_id, inputs))
            except OSError:  # broken pipe / reset: the worker died between calls
                self.close()
                raise WorkerError(
                    f"parallel worker {rank} ({self.spec.devices[rank]}) failed: its connection "
                    "closed (the process died)"
                ) from None
        return self._collect(("result",), None, interrupt)[0][1]

    def close(self) -> None:
        """Stop the workers (politely, then by force) and free the listener."""
        self.alive = False
        for connection in self.connections:
            with contextlib.suppress(Exception):
                _send(connection, ("stop", 0))
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for connection in self.connections:
            with contextlib.suppress(Exception):
                connection.close()
        with contextlib.suppress(Exception):
            self._listener.close()

    def __del__(self):
        if getattr(self, "processes", None) and any(p.poll() is None for p in self.processes):
            self.close()


class RemoteTransformer(nn.Module):
    """Callable like the transformer (models.pipeline.denoise's contract); the weights live in the pool's workers.
    A parameter-free module so the host's model management can hold it like any other model."""

    def __init__(self, pool: WorkerPool):
        super().__init__()
        self.pool = pool

    def forward(
        self, latents, timestep, text, text_t5=None, *, options: TransformerOptions | None = None, **conditions
    ):
        options = NO_OPTIONS if options is None else options
        teacache, step_index = options.teacache, options.step_index
        cpu = lambda t: t if not isinstance(t, torch.Tensor) else t.detach().cpu()  # noqa: E731
        inputs = {
            "latents": cpu(latents),
            "timestep": cpu(torch.as_tensor(timestep)),
            "text": cpu(text),
            "text_t5": cpu(text_t5),
            "step_index": step_index,
            **{k: cpu(v) for k, v in conditions.items()},
        }
        if teacache is not None:  # the workers keep their own TeaCache state, with these settings
            inputs["teacache"] = (teacache.coefficients, teacache.threshold, teacache.num_steps, teacache.skip_start)
        prediction, computed = self.pool.call(inputs, options.interrupt)
        if teacache is not None:
            (teacache.computed_steps if computed else teacache.skipped_steps).append(step_index)
        return prediction.to(latents.device)


def shared_pool(model, spec: PoolSpec) -> WorkerPool:
    """The live pool for `spec`, kept on the ModelComponents `model` (so it lives as long as the model); a pool
    that failed is replaced."""
    key = f"parallel workers {spec}"
    pool = model._get(key, lambda: WorkerPool(spec))
    if not pool.alive:
        model.release(key)
        pool = model._get(key, lambda: WorkerPool(spec))
    return pool


class ParallelModel:
    """A ModelComponents whose transformer runs in worker processes; everything else is the wrapped model's."""

    plan = None
    offloading = False

    def __init__(self, model, devices: str, sp: int | None = None, cfg_parallel: bool = False):
        if getattr(model, "loras", ()):  # the workers load the base weights only: never drop a LoRA silently
            raise ValueError(
                "EasyAnimate LoRA and EasyAnimate Parallel Options cannot be combined yet: the parallel workers "
                "would sample without the LoRA. Remove one of the two."
            )
        self.model = model
        from .components import DTYPES, STORAGE_DTYPES

        names = {dtype: name for table in (DTYPES, STORAGE_DTYPES) for name, dtype in table.items()}
        storage = None if model.storage_dtype is None else names[model.storage_dtype]
        precision = names[model.dtype]
        self.spec = PoolSpec(
            str(model.path), precision, storage, model.fp8_mode, parse_devices(devices), sp, cfg_parallel
        )

    def __getattr__(self, name):
        return getattr(self.model, name)

    def transformer(self, device=None, **_) -> RemoteTransformer:
        pool = shared_pool(self.model, self.spec)
        if getattr(pool, "remote", None) is None:
            pool.remote = RemoteTransformer(pool)
        return pool.remote

    def placement(self, transformer, device, stats=None):
        return contextlib.nullcontext()


# -- the worker side ------------------------------------------------------------------------------------------------------


def _teacache_for(current, settings):
    """The worker's TeaCache for the host's settings (coefficients, threshold, steps, skip_start); None = off."""
    if settings is None:
        return None
    if current is None or (current.coefficients, current.threshold, current.num_steps, current.skip_start) != settings:
        from .teacache import TeaCache

        coefficients, threshold, num_steps, skip_start = settings
        return TeaCache(coefficients, threshold, num_steps, skip_start=skip_start)
    return current


def worker_main(config: dict) -> int:
    from datetime import timedelta

    import torch.distributed as dist

    from .components import open_model
    from .parallel import ParallelTransformer, make_groups

    spec, rank = PoolSpec(**{**config["spec"], "devices": tuple(config["spec"]["devices"])}), config["rank"]
    connection = Client(tuple(config["host"]), authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    _send(connection, ("hello", rank))
    device = torch.device(spec.devices[rank])
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(spec.devices)))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{config['rendezvous_port']}",
            rank=rank,
            world_size=len(spec.devices),
            timeout=timedelta(minutes=30),
        )
        groups = make_groups(spec.sp, spec.cfg_parallel)
        model = open_model(spec.model_path, spec.precision, spec.weight_storage, "gpu", 0, spec.fp8_mode)
        parallel = ParallelTransformer(
            model.transformer(device=device, log=print if rank == 0 else lambda *_: None), groups
        )
        _send(connection, ("ready", None))
    except Exception:  # noqa: BLE001 - reported to the host, which shows it in the UI
        _send(connection, ("error", traceback.format_exc(limit=4)))
        return 1
    teacache = None
    while True:
        kind, call_id, *payload = _receive(connection)
        if kind == "stop":
            break
        if kind != "call":  # e.g. an interrupt that arrived after its call had finished
            continue
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in payload[0].items()}
        teacache = _teacache_for(teacache, inputs.pop("teacache", None))
        step_index = inputs.pop("step_index", None)

        def interrupt(call_id=call_id):
            while connection.poll():
                message = _receive(connection)
                if message[0] == "interrupt" and message[1] == call_id:
                    raise InterruptedError("interrupted by the host")

        try:
            with torch.no_grad():
                options = TransformerOptions(step_index=step_index, teacache=teacache, interrupt=interrupt)
                out = parallel(**inputs, options=options)
            computed = teacache is None or teacache.computed_steps[-1:] == [step_index]
            _send(connection, ("result", (out.cpu(), computed) if rank == 0 else None))
        except InterruptedError:
            print(f"EasyAnimate parallel worker {rank}: interrupted", flush=True)
            _send(connection, ("interrupted", None))
        except Exception:  # noqa: BLE001 - the host fails the pool with this message
            _send(connection, ("error", traceback.format_exc(limit=4)))
            return 1
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
