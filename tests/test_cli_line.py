"""Every documented command works as written (issue 14): overrides anywhere on the line, shipped
configs by name from any directory, shape-only commands without the data."""

import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from hpc_dl import config
from hpc_dl.errors import ConfigError
from tests.conftest import CONFIGS, ROOT, run_cli

CNN = CONFIGS / "digits_cnn.yaml"


# ------------------------------------------------- 1. overrides anywhere on the line
def test_train_takes_an_override_after_an_option(tmp_path):
    run = tmp_path / "a"
    proc = run_cli("train", CNN, "--run-dir", run, "checkpoint.every=2", "train.steps=2", "log.wandb=false",
                   "log.plots=false", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["checkpoint"]["every"] == 2 and saved["train"]["steps"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "scaling", CNN, "--mode", "weak", "--points", "1x1", "--launcher", "slurm", "slurm.acount=proj"],
        ["submit", CNN, "--dry-run", "slurm.acount=proj"],
        ["config", "slurm.acount=proj", CNN],
    ],
    ids=["bench-scaling", "submit", "override-first"],
)
def test_an_override_after_options_reaches_the_config(args, tmp_path):
    # A typo in the key proves the override was read as one (no Slurm job is ever submitted).
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown key 'slurm.acount' (override 'slurm.acount=proj')"), proc.stderr


def test_bench_project_override_after_options(tmp_path):
    proc = run_cli("bench", "project", CNN, "--mfu", "0.4", "--nodes", "1,2", "data.batch_size=32", "--out", tmp_path,
                   check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "32 samples/device" in proc.stdout


@pytest.mark.parametrize(
    "args, usage, token",
    [
        (["train", CNN, "--run-dir", "runs/a", "stray"], "usage: hpc-dl train", "stray"),
        (["config", CNN, "other.yaml"], "usage: hpc-dl config", "other.yaml"),
        (["bench", "scaling", CNN, "--mode", "weak", "--points", "1x1", "--bogus"], "usage: hpc-dl bench scaling",
         "--bogus"),
        (["models", "optim.lr=1"], "usage: hpc-dl models", "optim.lr=1"),
    ],
    ids=["train", "config", "bench-scaling", "models"],
)  # fmt: skip
def test_a_leftover_is_named_with_the_subcommands_usage(args, usage, token, tmp_path):
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(usage), proc.stderr
    assert f"'{token}'" in proc.stderr.splitlines()[-1]


# ------------------------------------------------------- 2. shipped configs by name
def test_a_shipped_config_by_name_from_any_directory(tmp_path):
    for name in ("digits_lenet5", "digits_lenet5.yaml", "configs/digits_lenet5.yaml"):
        proc = run_cli("config", name, "train.steps=3", cwd=tmp_path, check=False)
        assert proc.returncode == 0, proc.stderr
        cfg = yaml.safe_load(proc.stdout)
        assert cfg["model"]["name"] == "lenet5" and cfg["train"]["steps"] == 3


def test_an_unknown_name_lists_the_shipped_configs(tmp_path):
    proc = run_cli("config", "digits_lenet", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "did you mean 'digits_lenet5'?" in proc.stderr and "cifar10_resnet18" in proc.stderr


def test_a_file_wins_over_a_shipped_name(tmp_path):
    (tmp_path / "digits_lenet5").write_text("train: {steps: 7}\n")
    assert config.load(tmp_path / "digits_lenet5").train.steps == 7


def test_the_wheel_holds_every_shipped_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "hpc_dl", src / "hpc_dl", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp_path / "w", src], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "w").glob("hpc_dl-*.whl")
    inside = {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(wheel).namelist() if n.startswith("hpc_dl/configs/")}
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert len(shipped) >= 19 and inside == shipped


# ------------------------------------------------------- 3. shapes without the data
def test_flops_and_projection_need_no_cifar_files(tmp_path):
    proc = run_cli("flops", "configs/cifar10_resnet18.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "forward + backward of one micro-batch of 128" in proc.stdout
    proc = run_cli("bench", "project", "configs/cifar10_resnet18.yaml", "--mfu", "0.4", "--gpu", "H100 SXM",
                   "--nodes", "1,2", "--out", tmp_path / "p", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_imagefolder_classes_from_folders_or_asked_for(tmp_path):
    root = tmp_path / "flowers"
    for name in ("daisy", "rose", "tulip"):
        (root / "train" / name).mkdir(parents=True)  # no images needed: only the folder names
    args = ["flops", "imagenet_resnet50", "data.batch_size=2"]
    proc = run_cli(*args, f"data.root={root}", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert " 6,147" in proc.stdout  # fc: 2048 x 3 + 3 parameters
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--classes" in proc.stderr, proc.stderr
    proc = run_cli(*args, "--classes", "1000", cwd=tmp_path, check=False)
    assert proc.returncode == 0 and " 2,049,000" in proc.stdout, proc.stderr


def test_shape_only_specs():
    from hpc_dl import data

    def spec(path, *overrides):
        return data.shape_spec(config.load(path, list(overrides)).data)

    def shape(s):
        return s.input_shape, s.num_classes, s.task

    cifar = spec(CONFIGS / "cifar100_resnet56.yaml", "data.root=/nonexistent")
    assert (cifar.input_shape, cifar.num_classes) == ((3, 32, 32), 100)
    tokens = spec(CONFIGS / "tokens_gpt.yaml")  # its path is on a cluster's scratch
    assert (tokens.input_shape, tokens.num_classes, tokens.task) == ((1024,), 50257, "lm")
    with pytest.raises(ConfigError, match="data.vocab_size"):
        spec(CONFIGS / "tokens_gpt.yaml", "data.vocab_size=null")
    big = spec(CONFIGS / "synthetic_resnet50.yaml", "data.samples=100000000")  # nothing is generated
    assert (big.input_shape, big.num_classes) == ((3, 224, 224), 1000)
    digits = spec(None, "data.image_size=32", "data.channels=3", "data.classes=[1,2]")
    assert (digits.input_shape, digits.num_classes) == ((3, 32, 32), 2)
    # where the data is at hand, the shapes are the loader's
    for name, overrides in [
        ("digits_lenet5", []),
        ("digits_cnn", ["data.classes=[3,1,4]"]),
        ("verse_gpt", []),
        ("synthetic_gpt", []),
        ("synthetic_tabular_mlp", []),
        ("breast_cancer_mlp", []),
    ]:
        cfg = config.load(name, overrides).data
        assert shape(data.shape_spec(cfg)) == shape(data.build(cfg).spec), name


def test_an_override_that_switches_the_variant_drops_the_files_other_keys():
    cfg = config.load(CONFIGS / "cifar10_resnet18.yaml", ["data.name=synthetic_images"])
    assert cfg.data.name == "synthetic_images" and cfg.data.batch_size == 128  # shared keys stay
    cfg = config.load(CONFIGS / "cifar10_resnet20.yaml", ["model.name=mlp"])
    assert cfg.model == config.MLPConfig()
    # a key given by an override is never dropped: it is still an error
    with pytest.raises(ConfigError, match=r"unknown key 'data.root' \(override 'data.root=x'\)"):
        config.load(CONFIGS / "cifar10_resnet18.yaml", ["data.name=synthetic_images", "data.root=x"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.augment'"):
        config.load(CONFIGS / "cifar10_resnet18.yaml", ["data.name=synthetic_images", "data.augment.hflip=false"])


@pytest.mark.parametrize("line", [["--help"], ["config"], ["config", "digits_cnn", "optim.lr=0.01"],
                                  ["submit", "--dry-run", "--partition", "gpu"], ["train", "--help"]])  # fmt: skip
def test_login_node_commands_import_no_torch(line, tmp_path):
    """Importing torch from a shared file system takes seconds on a login node: --help, config and
    submit --dry-run never do (the modules of torch are looked for in sys.modules after the command)."""
    code = ("import sys\nfrom hpc_dl.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nprint('torch modules:', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
            "sys.exit(rc)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, *line], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "torch modules: []" in proc.stdout, proc.stdout[-500:]
