"""Start a real ComfyUI headless and drive it over HTTP + websocket, the way the browser frontend does.

Used by the integration tests and by the headless workflow runner. Only loopback addresses are used.

    with ComfyServer.start(custom_nodes={"ComfyUI-EasyAnimate": repo}, model_paths={"EasyAnimate": [dir]}) as server:
        result = server.run(api_prompt)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from comfyui_setup import ensure_comfyui


class PromptRejected(RuntimeError):
    """POST /prompt refused the prompt, or accepted it with non-empty node_errors (a partial failure)."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors") or {}


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict = field(default_factory=dict)  # node id → output dict from /history
    error: dict | None = None  # the execution_error payload
    events: list = field(default_factory=list)  # (type, data) websocket messages for this prompt

    def files(self, kind: str | None = None) -> list[dict]:
        """Every {filename, subfolder, type} entry the output nodes reported (images, gifs, videos, ...)."""
        entries = []
        for output in self.outputs.values():
            for key, items in output.items():
                if kind is not None and key != kind:
                    continue
                if isinstance(items, list):
                    entries.extend(item for item in items if isinstance(item, dict) and "filename" in item)
        return entries


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def import_failures(log_text: str) -> list[str]:
    """Custom-node folders ComfyUI failed to import, from its start-up log."""
    failed = re.findall(r"\(IMPORT FAILED\):\s*(\S.*)", log_text)
    failed += re.findall(r"Cannot import (\S+) module for custom nodes", log_text)
    return sorted({Path(p.strip()).name for p in failed})


def write_model_paths_yaml(path: Path, model_paths: dict[str, list[Path]] | None) -> Path:
    """An extra_model_paths.yaml mapping model-folder keys (e.g. "EasyAnimate") to directories."""
    blocks = [
        "\n".join([f"    {name}: |"] + [f"        {Path(p).resolve()}" for p in paths])
        for name, paths in (model_paths or {}).items()
    ]
    path.write_text("easyanimate_tests:\n" + "\n".join(blocks) + "\n" if blocks else "{}\n")
    return path


class ComfyServer:
    def __init__(self, comfy_dir: Path, base_dir: Path, port: int, process: subprocess.Popen, log_path: Path):
        self.comfy_dir = comfy_dir
        self.base_dir = base_dir
        self.port = port
        self.process = process
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        custom_nodes: dict[str, Path] | None = None,
        model_paths: dict[str, list[Path]] | None = None,
        base_dir: Path | None = None,
        extra_args: list[str] | None = None,
        timeout: float = 300.0,
    ) -> "ComfyServer":
        """Start `main.py --cpu` on a free loopback port with an isolated base directory.

        `custom_nodes` maps folder names to pack directories, linked into `<base>/custom_nodes/`; `model_paths`
        maps model-folder keys (e.g. "EasyAnimate") to directories, written into an extra_model_paths.yaml.
        """
        comfy_dir = ensure_comfyui()
        base_dir = Path(base_dir or tempfile.mkdtemp(prefix="comfyui-run-"))
        for sub in ("custom_nodes", "models", "input", "output", "user"):
            (base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, path in (custom_nodes or {}).items():
            link, target = base_dir / "custom_nodes" / name, Path(path).resolve()
            if link.is_symlink() and link.resolve() != target:  # a reused base dir linked to another checkout
                link.unlink()
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        yaml_path = write_model_paths_yaml(base_dir / "extra_model_paths.yaml", model_paths)
        args = [
            "--cpu",
            "--base-directory",
            str(base_dir),
            "--database-url",
            "sqlite:///:memory:",
            "--extra-model-paths-config",
            str(yaml_path),
            *(extra_args or []),
        ]
        return cls.launch(comfy_dir, base_dir, args, base_dir / "server.log", timeout)

    @classmethod
    def launch(cls, comfy_dir: Path, base_dir: Path, args: list[str], log_path: Path, timeout: float) -> "ComfyServer":
        """Run `main.py <args>` on a free loopback port, offline, and wait until it answers."""
        port = free_port()
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                cmd, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = cls(comfy_dir, base_dir, port, process, log_path)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI not ready after {timeout:.0f}s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP --------------------------------------------------------------------------------------------------------
    def get(self, route: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, route: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + route, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except json.JSONDecodeError:
                return err.code, {"error": raw.decode(errors="replace")}

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict) -> str:
        """POST an API-format prompt; any rejection or non-empty node_errors raises PromptRejected."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200 or body.get("node_errors"):
            raise PromptRejected(f"prompt rejected (HTTP {status}): {json.dumps(body)[:4000]}", body)
        return body["prompt_id"]

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def upload_image(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        data = Path(path).read_bytes()
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{Path(path).name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            self.url + "/upload/image", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["name"]

    def output_path(self, entry: dict) -> Path:
        root = {"output": "output", "temp": "temp", "input": "input"}[entry.get("type", "output")]
        return self.base_dir / root / entry.get("subfolder", "") / entry["filename"]

    # -- websocket ---------------------------------------------------------------------------------------------------
    def run(self, prompt: dict, timeout: float = 600.0, on_event=None) -> PromptResult:
        """Queue `prompt` and follow it over the websocket until ComfyUI reports it finished.

        Returns the outcome (success / error / interrupted) with outputs from /history; rejection at validation
        raises PromptRejected. `on_event(type, data)` sees every JSON message for this prompt (e.g. to interrupt).
        """
        from ws_client import WebSocket  # standard library only: the runner needs nothing beyond requirements.txt

        ws = WebSocket.connect("127.0.0.1", self.port, f"/ws?clientId={self.client_id}", timeout=timeout)
        try:
            prompt_id = self.queue(prompt)
            result = PromptResult(prompt_id=prompt_id, status="running")
            deadline = time.monotonic() + timeout
            while True:
                ws.settimeout(max(1.0, deadline - time.monotonic()))
                message = ws.recv()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prompt {prompt_id} still running after {timeout:.0f}s")
                if not isinstance(message, str):
                    continue  # binary preview frames
                event = json.loads(message)
                kind, data = event.get("type"), event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                result.events.append((kind, data))
                if on_event is not None:
                    on_event(kind, data)
                if kind == "execution_error":
                    result.status, result.error = "error", data
                elif kind == "execution_interrupted":
                    result.status = "interrupted"
                elif kind == "execution_success":
                    result.status = "success"
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break  # ComfyUI's end marker for this prompt
        finally:
            ws.close()
        history = self.get(f"/history/{prompt_id}").get(prompt_id, {})
        result.outputs = history.get("outputs", {})
        if result.status == "running":
            result.status = history.get("status", {}).get("status_str", "unknown")
        return result
