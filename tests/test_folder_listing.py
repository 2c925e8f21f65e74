"""The loader and LoRA dropdowns list their folders once and re-read only what changed (nodes/folders.py): a second
INPUT_TYPES lists no directory and reads no safetensors header; a file added later shows once its folder's mtime
moves, and only that file's header is read."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from safetensors.torch import save_file

OLD = 1_600_000_000 * 10**9  # a fixed past mtime (ns): any later change moves it, whatever the clock's granularity


def _transformer_file(path, keys):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(1) for key in keys}, str(path))


def _age(*folders):
    for folder in folders:
        os.utime(folder, ns=(OLD, OLD))


@pytest.fixture
def nodes(pack, tmp_path, monkeypatch):
    """The loader / folders modules with diffusion_models and EasyAnimate pointing into tmp_path, counting header
    reads and directory listings."""
    loaders = importlib.import_module(f"{pack.__name__}.nodes.loaders")
    folders = importlib.import_module(f"{pack.__name__}.nodes.folders")
    roots = {"diffusion_models": tmp_path / "diffusion_models", "EasyAnimate": tmp_path / "EasyAnimate"}
    for root in roots.values():
        root.mkdir()
    monkeypatch.setattr(folders, "model_dirs", lambda key: [roots[key]] if key in roots else [])
    counts = {"headers": 0, "listings": 0}
    read_header, scandir = loaders.header_keys, os.scandir

    def counted_header(path):
        counts["headers"] += 1
        return read_header(path)

    def counted_scandir(path):
        counts["listings"] += 1
        return scandir(path)

    monkeypatch.setattr(loaders, "header_keys", counted_header)
    monkeypatch.setattr(folders.os, "scandir", counted_scandir)
    return loaders, roots, counts


def _choices(loaders):
    return loaders.EasyAnimateModelLoader.INPUT_TYPES()["required"]["model"][0]


def test_a_second_input_types_lists_no_folder_and_reads_no_header(nodes):
    loaders, roots, counts = nodes
    diffusion = roots["diffusion_models"]
    _transformer_file(diffusion / "ours.safetensors", loaders.TRANSFORMER_HEADER_KEYS)
    _transformer_file(diffusion / "sdxl" / "other.safetensors", ["model.diffusion_model.input_blocks.0.0.weight"])
    _age(diffusion / "sdxl", diffusion, roots["EasyAnimate"])

    assert _choices(loaders) == ["diffusion_models/ours.safetensors"]
    assert counts["headers"] == 2 and counts["listings"] >= 3
    counts.update(headers=0, listings=0)
    assert _choices(loaders) == ["diffusion_models/ours.safetensors"]
    assert counts == {"headers": 0, "listings": 0}


def test_a_new_file_shows_once_its_folder_changes_and_only_its_header_is_read(nodes):
    loaders, roots, counts = nodes
    diffusion = roots["diffusion_models"]
    _transformer_file(diffusion / "ours.safetensors", loaders.TRANSFORMER_HEADER_KEYS)
    (diffusion / "deep").mkdir()
    _age(diffusion / "deep", diffusion, roots["EasyAnimate"])
    assert _choices(loaders) == ["diffusion_models/ours.safetensors"]

    counts.update(headers=0)
    _transformer_file(diffusion / "deep" / "new.safetensors", loaders.TRANSFORMER_HEADER_KEYS)  # deep/'s mtime moves
    assert _choices(loaders) == ["diffusion_models/deep/new.safetensors", "diffusion_models/ours.safetensors"]
    assert counts["headers"] == 1


def test_a_model_folder_whose_download_lands_later_shows(nodes):
    loaders, roots, counts = nodes
    folder = roots["EasyAnimate"] / "EasyAnimateV5.1-7b-zh"
    folder.mkdir()
    _age(folder, roots["EasyAnimate"], roots["diffusion_models"])
    assert _choices(loaders) == [loaders.no_models_entry()]
    (folder / "transformer").mkdir()  # only the model folder's own mtime moves, not its parent's
    assert _choices(loaders) == ["EasyAnimateV5.1-7b-zh"]


def test_a_removed_lora_disappears(pack, tmp_path, monkeypatch):
    folders = importlib.import_module(f"{pack.__name__}.nodes.folders")
    lora = importlib.import_module(f"{pack.__name__}.nodes.lora")
    monkeypatch.setattr(folders, "model_dirs", lambda key: [tmp_path] if key == lora.LORAS_FOLDER else [])
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    _age(tmp_path)
    assert lora.list_loras() == ["a.safetensors", "b.safetensors"]
    (tmp_path / "a.safetensors").unlink()
    assert lora.list_loras() == ["b.safetensors"]
