"""Installing on a compute node without internet, from a wheelhouse (slurm/README.md): wheels made on a
login node, `pip install --no-index --find-links` on the compute side. No network here either: hpc_dl's
wheel is built from its source, and the light pure-Python dependencies are re-packed from this venv
(on a login node, `pip wheel` downloads them). The fresh venv sees this venv's other packages, so
torch is not installed again."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import hpc_dl
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

LIGHT = ("tqdm", "submitit", "cloudpickle")  # pure Python; the wheelhouse must carry them


def repack(name: str, wheelhouse: Path) -> None:
    """A pure-Python distribution installed here, as the wheel it was installed from."""
    dist = importlib.metadata.distribution(name)
    info = next(f for f in dist.files if f.parts[0].endswith(".dist-info"))
    assert "Root-Is-Purelib: true" in dist.read_text("WHEEL")
    wheel = wheelhouse / f"{info.parts[0].removesuffix('.dist-info')}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in dist.files:  # RECORD: paths relative to site-packages
            if f.parts[0] != ".." and "__pycache__" not in f.parts and f.name not in ("INSTALLER", "direct_url.json"):
                z.write(f.locate(), str(f))


def run(*cmd, cwd=None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv itself has
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_install_from_a_wheelhouse_with_no_index(tmp_path):
    # Login node: hpc_dl's wheel (from the package alone, as the container recipe copies it) ...
    src, wheelhouse = tmp_path / "src", tmp_path / "wheelhouse"
    shutil.copytree(ROOT / "hpc_dl", src / "hpc_dl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheelhouse, src)
    for name in LIGHT:  # ... and its dependencies' wheels
        repack(name, wheelhouse)

    # Compute node: a fresh venv that sees this venv's packages but not hpc_dl or the light ones.
    here = Path(sysconfig.get_paths()["purelib"])
    hidden = {"hpc_dl", *LIGHT}
    shared = tmp_path / "shared"
    shared.mkdir()
    for entry in here.iterdir():
        if entry.name.split("-")[0].lower() not in hidden and not entry.name.startswith("__editable__"):
            (shared / entry.name).symlink_to(entry)
    run(sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "shared.pth").write_text(f"{shared}\n")
    run(python, "-m", "pip", "install", "--no-index", "--find-links", wheelhouse, "hpc_dl", cwd=tmp_path)

    assert run(tmp_path / "venv" / "bin" / "hpc-dl", "--version", cwd=tmp_path).strip().endswith(hpc_dl.__version__)
    where = run(python, "-c", "import hpc_dl, tqdm, submitit, cloudpickle, torch\n"
                "for m in (hpc_dl, tqdm, submitit, cloudpickle, torch): print(m.__file__)", cwd=tmp_path)  # fmt: skip
    *installed, torch = where.split()
    assert all(path.startswith(str(site)) for path in installed), where  # from the wheelhouse
    assert torch.startswith(str(shared)), where  # not installed again
    assert "name: mlp" in run(tmp_path / "venv" / "bin" / "hpc-dl", "config", "breast_cancer_mlp", cwd=tmp_path)
