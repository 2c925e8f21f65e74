"""Model discovery outside ComfyUI (env override) and name validation of the loader's dropdown entries."""

import pytest


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    root = tmp_path / "EasyAnimate"
    (root / "EasyAnimateV5.1-12b-zh-InP" / "transformer").mkdir(parents=True)
    (root / "half-download" / "model_index.json").parent.mkdir(parents=True)
    (root / "half-download" / "model_index.json").write_text("{}")
    (root / "random-folder").mkdir()
    (tmp_path / "secret").mkdir()
    monkeypatch.setenv("EASYANIMATE_MODELS_DIR", str(root))
    return root


def test_listing_returns_folders_that_look_like_models(pack, models_dir):
    assert pack.nodes.loaders.list_models() == ["EasyAnimateV5.1-12b-zh-InP", "half-download"]


def test_resolve_returns_the_folder(pack, models_dir):
    assert pack.nodes.loaders.resolve_model("half-download") == (models_dir / "half-download").resolve()


@pytest.mark.parametrize("name", ["../secret", "/etc", "a/../../secret", "", "diffusion_models/../../secret"])
def test_resolve_refuses_names_outside_the_model_folders(pack, models_dir, name):
    with pytest.raises((ValueError, FileNotFoundError)):
        pack.nodes.loaders.resolve_model(name)


def test_resolve_names_the_searched_folders_when_missing(pack, models_dir):
    with pytest.raises(FileNotFoundError, match=str(models_dir)):
        pack.nodes.loaders.resolve_model("EasyAnimateV5-7b-zh")


def test_no_models_placeholder_explains_where_to_put_them(pack, models_dir):
    with pytest.raises(FileNotFoundError, match="models/EasyAnimate"):
        pack.nodes.loaders.resolve_model(pack.nodes.loaders.NO_MODELS)


def test_a_symlinked_model_folder_elsewhere_is_listed_and_resolves(pack, models_dir, tmp_path):
    elsewhere = tmp_path / "other-drive" / "EasyAnimateV5-7b-zh"
    (elsewhere / "vae").mkdir(parents=True)
    (models_dir / "linked-model").symlink_to(elsewhere, target_is_directory=True)
    assert "linked-model" in pack.nodes.loaders.list_models()
    assert pack.nodes.loaders.resolve_model("linked-model").resolve() == elsewhere.resolve()
