"""containers/hpc_dl.def, read by a real Singularity/Apptainer definition parser (spython). No
Apptainer runtime can be installed on the development and CI machines, so the image itself is
built and tested (its %test section) only on a cluster's login node."""

import re

import pytest
from spython.main.parse.parsers import SingularityParser  # the dev extra

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

RECIPE = ROOT / "containers" / "hpc_dl.def"


@pytest.fixture(scope="module")
def recipe():
    parser = SingularityParser(str(RECIPE))  # raises on a bootstrap other than docker
    return parser.lines, parser.recipe["spython-base"]


def test_the_image_starts_from_ngc_pytorch(recipe):
    lines, r = recipe
    assert [line.split() for line in lines if line.lower().startswith("bootstrap:")] == [["Bootstrap:", "docker"]]
    assert r.fromHeader == "nvcr.io/nvidia/pytorch:25.10-py3"


def test_only_the_package_is_copied_into_the_image(recipe):
    """Not the checkout: its .venv (gigabytes), runs/ and .git stay out."""
    _, r = recipe
    sources = [entry.split()[0] for entry in r.files]
    assert sorted(sources) == ["README.md", "hpc_dl", "pyproject.toml"], r.files  # README: pyproject's readme
    for source in sources:
        assert (ROOT / source).exists() and not re.search(r"(^|/)(\.venv|\.git|runs)(/|$)|^\.$", source)


def test_post_installs_hpc_dl_with_its_dependencies_and_extras(recipe):
    """`hpc-dl explain` needs shap (a dependency) and ONNX export needs onnxscript (the onnx extra):
    the package is installed with its dependencies, not --no-deps, keeping the image's torch."""
    _, r = recipe
    (install,) = [line for line in r.install if line.startswith("pip install") and "/opt/hpc_dl/src" in line]
    assert "--no-deps" not in install
    extras = set(re.search(r"/opt/hpc_dl/src\[([a-z,]+)\]", install)[1].split(","))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras == {"deepspeed", "onnx"} <= set(project["optional-dependencies"])
    assert any(d.startswith("shap") for d in project["dependencies"])
    assert any(d.startswith("onnxscript") for d in project["optional-dependencies"]["onnx"])
    keep = install.split("-c ")[1].split()[0]  # the constraint file that pins torch to the image's build
    (pin,) = [line for line in r.install if line.startswith("python -c") and line.endswith(f"> {keep}")]
    assert "'torch==' + torch.__version__" in pin and "'torchvision==' + torchvision.__version__" in pin
