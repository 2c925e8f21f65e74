"""The EasyAnimate LoRA node: its folder handling (plain functions) and, in a real ComfyUI server, stacking, switching
and removing LoRAs between runs (bit-identical to runs that never saw them, no reload; no RSS growth, measured with
LoRAs large enough for a leak to show)."""

from __future__ import annotations

import importlib

import numpy as np
import psutil
import pytest
import torch
from test_comfyui_video import graph, read_video, run_ok

SWITCH_MODEL = "tiny-EasyAnimateV5.1-12b-zh-diffusers"  # used by no other server test: its first load is here
LORA = "easyanimate_v5.1_style_lora.safetensors"  # kohya names (tests/conftest.py, tiny_lora_folder)
PEFT_LORA = "tiny_peft_lora.safetensors"


@pytest.fixture
def lora_nodes(pack):
    import importlib

    return importlib.import_module(f"{pack.__name__}.nodes.lora")


@pytest.fixture
def lora_dir(tmp_path, monkeypatch, lora_nodes):
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "ink.safetensors").write_bytes(b"")
    (tmp_path / "old.ckpt").write_bytes(b"")
    folders = importlib.import_module(lora_nodes.__name__.rsplit(".", 1)[0] + ".folders")  # the shared listing helper
    monkeypatch.setattr(folders, "model_dirs", lambda key: [tmp_path] if key == "loras" else [])
    return tmp_path


def test_lists_safetensors_files_of_the_loras_folders_only(lora_nodes, lora_dir):
    assert lora_nodes.list_loras() == ["styles/ink.safetensors"]
    assert lora_nodes.resolve_lora("styles/ink.safetensors") == (lora_dir / "styles" / "ink.safetensors").absolute()


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd.safetensors", "styles/../../x.safetensors"])
def test_names_leaving_the_loras_folders_are_refused(lora_nodes, lora_dir, name):
    with pytest.raises(ValueError, match="inside the loras folders"):
        lora_nodes.resolve_lora(name)


def test_pickle_files_are_refused_by_name(lora_nodes, lora_dir):
    with pytest.raises(ValueError, match="only .safetensors"):
        lora_nodes.resolve_lora("old.ckpt")


def test_text_encoder_strength_is_the_strength_times_the_ratio(pack, lora_nodes, tiny_root, tmp_path, monkeypatch):
    import importlib

    from tiny_loras import make_lora

    open_model = importlib.import_module(f"{pack.__name__}.models.components").open_model
    model_dir = tiny_root / "tiny-EasyAnimateV5-12b-zh"
    file = make_lora(model_dir, "kohya_te").save(tmp_path / "te.safetensors")
    monkeypatch.setattr(lora_nodes, "resolve_lora", lambda name: file)
    node, model = lora_nodes.EasyAnimateLora(), open_model(model_dir, "fp32")
    assert [s for _, s in node.apply(model, "te.safetensors", 0.6)[0].text_loras] == [0.6]  # default: same strength
    assert [s for _, s in node.apply(model, "te.safetensors", 0.6, text_encoder_ratio=0.5)[0].text_loras] == [0.3]
    assert [s for _, s in node.apply(model, "te.safetensors", 0.6, text_encoder_ratio=0.0)[0].text_loras] == [0.0]


def test_the_text_encode_node_encodes_through_the_lora_nodes_text_encoder_part(
    pack, lora_nodes, tiny_root, tmp_path, monkeypatch
):
    """Loader output -> LoRA node -> Text Encode node: the Bert stream changes, mT5's does not; ratio 0 is the base."""
    import importlib

    from tiny_loras import make_lora

    open_model = importlib.import_module(f"{pack.__name__}.models.components").open_model
    encode_node = importlib.import_module(f"{pack.__name__}.nodes.text").EasyAnimatePromptEncode()
    model_dir = tiny_root / "tiny-EasyAnimateV5-12b-zh"
    file = make_lora(model_dir, "kohya_te", seed=21).save(tmp_path / "te.safetensors")
    monkeypatch.setattr(lora_nodes, "resolve_lora", lambda name: file)
    model = open_model(model_dir, "fp32")

    def bert_and_t5(source):
        return encode_node.encode(source, "a lighthouse in a storm", "")["result"][0].positive

    base = bert_and_t5(model)
    with_te = bert_and_t5(lora_nodes.EasyAnimateLora().apply(model, "te.safetensors", 1.0)[0])
    off = bert_and_t5(lora_nodes.EasyAnimateLora().apply(model, "te.safetensors", 1.0, text_encoder_ratio=0.0)[0])
    assert not torch.equal(with_te[0], base[0]) and torch.equal(with_te[1], base[1])
    assert torch.equal(off[0], base[0]) and torch.equal(off[1], base[1])
    assert not model.text_encoder().loaded  # released after encoding, as without a LoRA


# -- real server ------------------------------------------------------------------------------------------------------


def lora_graph(model, stack, prefix, **kwargs):
    """graph() with `stack` [(lora file, strength)] chained between the loader and every consumer of the model."""
    prompt = graph(model, prefix=prefix, **kwargs)
    source = ["1", 0]
    for i, (name, strength) in enumerate(stack):
        node = str(10 + i)
        prompt[node] = {
            "class_type": "EasyAnimateLora",
            "inputs": {"model": source, "lora_name": name, "strength": strength},
        }
        source = [node, 0]
    for node in ("2", "3", "4"):
        prompt[node]["inputs"]["model"] = source
    return prompt


def _rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


def _loads_logged(server) -> int:
    """Transformers handed to ComfyUI's model management so far: a reloaded transformer is a new module, which gets
    a new ModelPatcher, which ComfyUI logs as "Requested to load EasyAnimateTransformer" again."""
    return server.log_path.read_text(errors="replace").count("Requested to load EasyAnimateTransformer")


def test_node_lists_the_loras_folder_with_strength_from_minus_10_to_10(comfy_server):
    info = comfy_server.object_info()["EasyAnimateLora"]["input"]
    assert {LORA, PEFT_LORA} <= set(info["required"]["lora_name"][0])
    assert (info["required"]["strength"][1]["min"], info["required"]["strength"][1]["max"]) == (-10.0, 10.0)
    assert list(info["optional"]) == ["apply", "text_encoder_ratio"]  # appended: saved workflows keep their values
    assert info["optional"]["text_encoder_ratio"][1]["default"] == 1.0


def test_switching_and_removing_loras_is_bit_identical_to_runs_without_them_and_never_reloads(comfy_server):
    loads_before = _loads_logged(comfy_server)
    runs = {"base": [], "a": [], "b": [], "ab": []}
    stacks = {"base": [], "a": [(LORA, 0.8)], "b": [(LORA, -0.5)], "ab": [(LORA, 0.8), (PEFT_LORA, -0.7)]}
    for cycle in range(3):
        for key in ("base", "a", "b", "ab"):
            result = run_ok(comfy_server, lora_graph(SWITCH_MODEL, stacks[key], f"lora-{key}-{cycle}", seed=3))
            runs[key].append(read_video(comfy_server, result))
    for key, videos in runs.items():  # the first base run is a fresh load; each later run repeats its first exactly
        assert all(np.array_equal(video, videos[0]) for video in videos[1:]), key
    assert not np.array_equal(runs["a"][0], runs["base"][0])
    assert not np.array_equal(runs["a"][0], runs["b"][0]) and not np.array_equal(runs["a"][0], runs["ab"][0])
    assert _loads_logged(comfy_server) - loads_before == 1  # one transformer load for all twelve runs


BIG = "big-EasyAnimateV5.1-12b-zh"  # tests/big_checkpoint.py
BIG_RANK = 384  # LoRAs of ≈ 77 M numbers (≈ 300 MiB in fp32) on the 105 M-parameter model: a leak is far above noise


@pytest.fixture
def big_lora_server(tmp_path_factory):
    """A server of its own holding the ≈ 105 M-parameter model and two rank-384 LoRAs on every Linear of it (one
    kohya, one PEFT), so that a leak of one LoRA is hundreds of MiB: the tiny LoRAs above weigh less than a MiB, below
    the server's own ≈ 50 MiB of allocator noise between runs."""
    from big_checkpoint import write_big_model
    from comfyui_server import ComfyServer
    from conftest import PACK_FOLDER_NAME, REPO_ROOT
    from tiny_loras import make_lora

    models, loras = tmp_path_factory.mktemp("lora_rss_models"), tmp_path_factory.mktemp("lora_rss_loras")
    model_dir = write_big_model(models, BIG)
    sizes = []
    for name, file_format, alpha, seed in (("big_a", "kohya", 192.0, 31), ("big_b", "peft", None, 32)):
        lora = make_lora(model_dir, file_format, rank=BIG_RANK, alpha=alpha, seed=seed, magnitude=0.05)
        lora.save(loras / f"{name}.safetensors", torch.bfloat16)
        sizes.append(sum(down.numel() + up.numel() for down, up, _ in lora.pairs.values()))
    server = ComfyServer.start(
        custom_nodes={PACK_FOLDER_NAME: REPO_ROOT},
        model_paths={"EasyAnimate": [models], "loras": [loras]},
        base_dir=tmp_path_factory.mktemp("comfyui_lora_rss"),
    )
    server.lora_numbers = min(sizes)
    yield server
    server.stop()


def test_switching_large_loras_for_three_cycles_does_not_grow_rss(big_lora_server):
    """base, A, B, A+B, three times over: RSS after the third cycle is within half of one LoRA (in the fp32 compute
    dtype it is held in) of RSS after the first. A LoRA kept per switch would add two or more per cycle."""
    server = big_lora_server
    stacks = {
        "base": [],
        "a": [("big_a.safetensors", 0.8)],
        "b": [("big_b.safetensors", -0.5)],
        "ab": [("big_a.safetensors", 0.8), ("big_b.safetensors", -0.7)],
    }
    rss = []
    for cycle in range(3):
        for key, stack in stacks.items():
            run_ok(server, lora_graph(BIG, stack, f"lora-rss-{key}-{cycle}", seed=3, steps=1), timeout=300)
        rss.append(_rss(server))
    one_lora = server.lora_numbers * 4
    growth = (rss[2] - rss[0]) / one_lora
    print(
        f"RSS after each cycle {[f'{r / 2**20:.0f} MiB' for r in rss]}, one LoRA {one_lora / 2**20:.0f} MiB, "
        f"growth {growth:.2f} LoRA"
    )
    assert growth <= 0.5, [f"{r / 2**20:.0f} MiB" for r in rss]


def test_a_lora_for_the_other_version_fails_at_its_node_naming_the_layers(comfy_server):
    result = comfy_server.run(lora_graph("tiny-EasyAnimateV5.1-12b-zh", [("tiny_v5_lora.safetensors", 1.0)], "v5l"))
    assert result.status == "error"
    assert result.error["node_type"] == "EasyAnimateLora"
    assert "V5 (Bert + mT5) text projection; this model is V5.1" in result.error["exception_message"]
