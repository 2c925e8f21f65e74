"""tools/comfyui_setup.py installs ComfyUI's requirements into every interpreter that lacks them (a second venv
sharing one ComfyUI folder gets them too), and leaves an interpreter that has them alone."""

from importlib.metadata import version

from comfyui_setup import requirement_lines, requirements_to_install


def test_installed_packages_are_not_installed_again_and_missing_ones_are():
    pytest_version = version("pytest")
    lines = ["pytest", f"pytest=={pytest_version}", "pytest>=1.0", "no-such-package-for-easyanimate-tests>=1"]
    assert requirements_to_install(lines) == ["no-such-package-for-easyanimate-tests>=1"]


def test_an_exact_pin_of_another_version_is_installed():
    assert requirements_to_install(["pytest==0.0.1"]) == ["pytest==0.0.1"]


def test_comfyui_requirement_lines_never_name_torch_packages(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "torch\ntorchvision>=0.1\ntorchaudio\naiohttp>=3.11.8  # web\n\n#x\nav\n"
    )
    assert requirement_lines(tmp_path)[:2] == ["aiohttp>=3.11.8", "av"]
