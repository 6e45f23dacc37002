"""Every model in the registry, at its intended input size, through the same trainer."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hpc_dl import config, data, models
from hpc_dl.data.spec import DataSpec
from hpc_dl.training.run import train
from tests.conftest import CONFIGS, run_cli


@pytest.mark.parametrize("name", list(models.MODELS))
def test_forward_and_backward_at_the_intended_input_size(name):
    entry = models.MODELS[name]
    torch.manual_seed(0)
    model = models.build(models.default_config(name), entry.default_input)
    x = models.example_input(entry.default_input, batch=2)
    out = model.train()(x)
    expected = (2, *entry.default_input.input_shape, entry.default_input.num_classes) if name == "gpt" else None
    if name == "gpt":
        assert out.shape[:2] == expected[:2] and out.shape[2] >= expected[2]  # vocabulary padded up
    else:
        assert out.shape == (2, entry.default_input.num_outputs)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


SMALL = {  # name -> data overrides for a few training steps at an intended size
    "mlp": ["data.name=breast_cancer"],
    "cnn": [],
    "lenet5": ["data.image_size=32"],
    "gpt": ["data.name=tokens", "data.block_size=32"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_trains_a_few_steps(tmp_path, name):
    data_over = SMALL.get(name, ["data.name=synthetic_images", "data.shape=[3,32,32]", "data.samples=8"])
    model_over = ["model.small_input=true"] if name in config.TORCHVISION_MODELS else []
    run = ["data.batch_size=4", "data.eval_batch_size=64", "train.steps=3", "train.eval_every=0", "log.progress=off"]
    cfg = config.load(None, [f"model.name={name}", *model_over, *data_over, *run, "log.plots=false"])
    if name == "gpt":
        cfg.data.val_fraction = cfg.data.test_fraction = 0.02  # a short evaluation
    summary = train(cfg, run_dir=tmp_path / name)
    assert summary["steps"] == 3 and summary["test"]["loss"] == summary["test"]["loss"]  # finite, not NaN


def test_lenet5_matches_the_classic_architecture():
    model = models.build(config.LeNetConfig(), DataSpec((1, 32, 32), 10))
    rows = {name: (shape, params) for name, _, shape, params in models.summary(model, DataSpec((1, 32, 32), 10))}
    assert rows["features.0"] == ((1, 6, 28, 28), 156)  # C1: 6 maps of 28x28, 6 x (25 + 1)
    assert rows["features.2"][0] == (1, 6, 14, 14)  # S2
    assert rows["features.3"] == ((1, 16, 10, 10), 2416)  # C3: 16 x (6 x 25 + 1)
    assert rows["features.5"][0] == (1, 16, 5, 5)  # S4
    assert rows["features.6"] == ((1, 120, 1, 1), 48120)  # C5
    assert rows["classifier.1"] == ((1, 84), 10164)  # F6
    assert rows["classifier.3"] == ((1, 10), 850)
    assert models.count_parameters(model) == 61706
    with FlopCounterMode(display=False) as flops:
        model(torch.randn(1, 1, 32, 32))
    assert flops.get_total_flops() == 833_040  # 2 x multiply-adds of the convolutions and linear layers


def test_small_input_stem_keeps_feature_maps():
    spec = DataSpec((3, 32, 32), 10)
    small = models.build(config.TorchvisionConfig(name="resnet18", small_input=True), spec)
    rows = {name: shape for name, _, shape, _ in models.summary(small, spec)}
    assert rows["layer4.1.relu"] == (1, 512, 4, 4)
    grey = models.build(config.TorchvisionConfig(name="googlenet", small_input=True), DataSpec((1, 32, 32), 10))
    assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_model_on_too_small_input_is_a_config_error():
    from hpc_dl.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot take 32x32 images; set model.small_input=true"):
        models.build(config.TorchvisionConfig(name="vgg11"), DataSpec((3, 32, 32), 10))
    with pytest.raises(ConfigError, match="model.name = 'gpt' needs token sequences"):
        models.build(config.GPTConfig(), DataSpec((3, 32, 32), 10))
    with pytest.raises(ConfigError, match="model.n_embd = 100 must be divisible by model.n_head = 3"):
        models.build(config.GPTConfig(n_embd=100, n_head=3), DataSpec((8,), 20, task="lm"))


def test_gpt_is_causal_tied_and_uses_one_qkv_projection():
    torch.manual_seed(0)
    model = models.build(config.GPTConfig(n_layer=2, n_head=2, n_embd=32), DataSpec((16,), 50, task="lm")).eval()
    x = torch.randint(0, 50, (2, 16))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # no position sees the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    assert model.head.weight is model.tok.weight
    attn = model.blocks[0].attn
    assert attn.qkv.out_features == 3 * 32 and a.shape[-1] == 64  # fused QKV; vocabulary padded to 64


@pytest.mark.slow
def test_resnet_on_digits_reaches_95_percent(tmp_path):
    run_cli("train", CONFIGS / "digits_resnet20.yaml", "--run-dir", tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["model"] == "resnet20" and summary["test"]["accuracy"] >= 0.95


@pytest.mark.slow
def test_transformer_on_the_builtin_corpus_beats_the_unigram_entropy(tmp_path):
    splits = data.build(config.load(CONFIGS / "verse_gpt.yaml").data)
    counts = torch.bincount(torch.from_numpy(splits.train.tokens.astype("int64")), minlength=splits.spec.num_classes)
    p = counts.double() / counts.sum()
    val_ids = torch.from_numpy(splits.val.tokens.astype("int64"))
    unigram = -torch.log(p[val_ids].clamp(min=1e-9)).mean().item()  # nats/char of the best context-free model
    run_cli("train", CONFIGS / "verse_gpt.yaml", "train.steps=150", "--run-dir", tmp_path / "g")
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert unigram > 3.0
    assert summary["val"]["loss"] < unigram - 0.5, (summary["val"]["loss"], unigram)
    metrics = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert "tokens_per_s" in metrics[0] and metrics[0]["tokens_per_s"] == pytest.approx(
        metrics[0]["samples_per_s"] * 64
    )


def _spec_without_files(d) -> DataSpec:
    """The shape a file-backed data set would give, so its config's model can be checked here."""
    if d.name in ("cifar10", "cifar100"):
        return DataSpec((3, 32, 32), 10 if d.name == "cifar10" else 100)
    if d.name == "imagefolder":
        return DataSpec((3, d.image_size, d.image_size), 1000)
    if d.name == "csv":
        return DataSpec((10,), 2)
    if d.name == "tokens" and d.path:
        return DataSpec((d.block_size,), d.vocab_size or 50304, task="lm")
    return data.build(d).spec


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_builds_its_model_for_its_data(path):
    cfg = config.load(path)
    spec = _spec_without_files(cfg.data)
    with torch.device("meta"):  # shapes only: a 138M-parameter VGG costs nothing here
        model = models.build(cfg.model, spec)
    assert models.count_parameters(model) > 0


def test_models_command_lists_and_summarises(capsys):
    from hpc_dl.cli import main

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in models.MODELS) and "61,706" in listing
    assert main(["models", "--summary", "resnet20", "--input", "1,16,16", "--classes", "7"]) == 0
    table = capsys.readouterr().out
    assert "(1, 7)" in table and "total" in table
    assert main(["models", "--summary", "resnet21"]) == 2
    assert "no such model" in capsys.readouterr().err
