"""Config loading, overrides and the errors a user sees."""

import re

import pytest
import yaml

from hpc_dl import config
from hpc_dl.cli import main
from hpc_dl.errors import ConfigError
from tests.conftest import CONFIGS


def test_embedded_default_is_the_digits_cnn_config():
    assert config.load() == config.load(CONFIGS / "digits_cnn.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    config.load(path)


def test_dotted_overrides_are_typed():
    cfg = config.load(None, ["optim.lr=3e-4", "train.steps=200", "model.name=mlp", "model.hidden=[8, 4]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 200 and cfg.train.epochs is None  # giving steps replaces default epochs
    assert cfg.model == config.MLPConfig(hidden=[8, 4])


def test_yaml_numbers_without_a_dot_and_yaml12_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-4}\nlog: {progress: off}\ntrain: {tf32: false}\n")
    cfg = config.load(path)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.log.progress == "off" and cfg.train.tf32 is False


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(CONFIGS / "breast_cancer_mlp.yaml", ["optim.lr=0.01", "train.seed=7"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config.to_yaml(cfg))
    assert config.load(saved) == cfg
    sections = {"model", "data", "optim", "transfer", "train", "checkpoint", "log", "dist", "slurm"}
    assert set(yaml.safe_load(saved.read_text())) == sections


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lrr=0.1"], "unknown key 'optim.lrr'.*did you mean 'optim.lr'"),
        (["train.lr=0.1"], "unknown key 'train.lr'.*did you mean 'optim.lr'"),
        (["optim.lr=-0.1"], r"optim.lr = -0.1 .*must be > 0"),
        (["optim.lr=fast"], "optim.lr = 'fast' .*must be a number"),
        (["train.steps=2.5"], "train.steps = 2.5 .*must be an integer"),
        (["train.deterministic=1"], "train.deterministic = 1 .*must be true or false"),
        (["optim.name=adamm"], "optim.name = 'adamm'.*one of sgd, adam, adamw.*did you mean 'adam'"),
        (["model.name=resnet999"], "model.name = 'resnet999'.*must be one of mlp, cnn"),
        (["model.name=mlp", "model.channels=[3]"], "unknown key 'model.channels'.*another 'model' variant"),
        (["model.name=mlp", "model.hidden=[8, -1]"], r"model.hidden\[1\] = -1 .*must be >= 1"),
        (["optim.nesterov=true", "optim.name=adam"], "optim.nesterov.*needs optim.name=sgd"),
        (["train.steps=10", "train.epochs=2"], "exactly one of train.steps and train.epochs"),
        (["optim"], "not of the form section.key=value"),
        (["optim.lr.x=1"], "optim.lr = a mapping .override .optim.lr.x=1.*must be a number"),
    ],
)
def test_bad_values_name_field_value_and_source(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        config.load(None, overrides)
    assert "override" in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  name: [adam\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+, column \d+"):
        config.load(path)


def test_error_in_file_names_the_file(tmp_path):
    path = tmp_path / "neg.yaml"
    path.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"optim.lr = -1 \(.*neg.yaml\): must be > 0"):
        config.load(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim:\n  lr: -0.5\n", "optim.lr = -0.5"),
        ("optim:\n  lr: [1, 2\n", "malformed YAML at line"),
        ("traine:\n  steps: 3\n", "unknown key 'traine'.*did you mean 'train'"),
        ("train:\n  grad_accum: two\n", "train.grad_accum = 'two'.*must be an integer"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert re.search(expected, err), err
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "config", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: optim.lr = -1" in err


def test_console_script_exit_code(cli, tmp_path):
    proc = cli("train", tmp_path / "missing.yaml", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'}"


def test_run_length_override_replaces_the_files_other_unit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    assert (config.load(path, ["train.steps=7"]).train.steps, config.load(path, ["train.steps=7"]).train.epochs) == (
        7,
        None,
    )
    path.write_text("train:\n  steps: 5\n")
    cfg = config.load(path, ["train.epochs=2"])
    assert (cfg.train.steps, cfg.train.epochs) == (None, 2.0)
    path.write_text("train:\n  steps: 5\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="exactly one of train.steps and train.epochs"):
        config.load(path)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["dist.strategy=fsdp", "checkpoint.format=file"], "checkpoint.format = 'file'.*fsdp writes sharded DCP"),
        (["dist.strategy=deepspeed", "checkpoint.format=dcp"], "deepspeed writes DeepSpeed's own checkpoint folders"),
        (["checkpoint.format=file", "checkpoint.async_save=true"], "async_save = True.*needs checkpoint.format=dcp"),
        (["dist.strategy=fsdp", "train.precision=fp16"], "fsdp trains in bf16 or fp32"),
    ],
)
def test_checkpoint_formats_and_strategies_that_do_not_go_together(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load(None, overrides)
