"""train.activation_checkpointing: the same loss and gradients, the blocks really recomputed, the same
state_dict keys, and a clear error for models without repeated blocks."""

import copy

import pytest
import torch
import torch.nn.functional as F

from hpc_dl import config, models
from hpc_dl.data.spec import DataSpec
from hpc_dl.errors import ConfigError
from hpc_dl.models import checkpointing

# Tiny versions built through the registry: (overrides, data spec, batch size). GPT with dropout, so
# the recomputation must replay the forward's random masks; the ResNets in training mode, so BatchNorm
# must not count the batch twice in its running statistics.
GPT = ["model.n_layer=4", "model.n_embd=32", "model.n_head=2", "model.dropout=0.1"]
MODELS = {
    "gpt": (GPT, DataSpec((16,), 50, task="lm"), 2),
    "resnet20": (["model.width=4"], DataSpec((3, 16, 16), 10), 4),
    "resnet18": (["model.small_input=true"], DataSpec((3, 32, 32), 10), 2),
}
BLOCKS = {"gpt": 4, "resnet20": 9, "resnet18": 8}
# Recomputing a block runs the same kernels on the same inputs; on the CPU the results are bitwise equal,
# the tolerance only allows for kernels that are not deterministic elsewhere.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def build(name: str, mode: str = "none"):
    overrides, spec, batch = MODELS[name]
    torch.manual_seed(0)
    model = models.build(config.load(None, [f"model.name={name}", *overrides]).model, spec)
    wrapped = checkpointing.apply(model, mode)
    torch.manual_seed(1)
    x = models.example_input(spec, batch)
    y = x.roll(-1, dims=1) if spec.task == "lm" else torch.randint(0, spec.num_classes, (batch,))
    return model.train(), wrapped, x, y


def step(model, x, y):
    """One forward and backward from a fixed RNG state; the loss, the gradients and the buffers."""
    torch.manual_seed(2)  # the same dropout masks in every run
    loss = F.cross_entropy(model(x).flatten(0, -2), y.flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(name):
        if name not in cache:
            model, _, x, y = build(name)
            cache[name] = step(model, x, y)
        return cache[name]

    return get


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("name", list(MODELS))
def test_same_loss_gradients_and_buffers(name, mode, reference):
    model, wrapped, x, y = build(name, mode)
    assert wrapped == (BLOCKS[name] if mode == "full" else BLOCKS[name] // 2)
    loss, grads, buffers = step(model, x, y)
    ref_loss, ref_grads, ref_buffers = reference(name)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    assert list(grads) == list(ref_grads)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], **TOL, msg=lambda m, n=n: f"{n}: {m}")
    for n in buffers:  # BatchNorm's running statistics and batch count: updated once, not twice
        torch.testing.assert_close(buffers[n], ref_buffers[n], **TOL, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("mode", ["none", "full", "selective"])
@pytest.mark.parametrize("name", list(MODELS))
def test_wrapped_blocks_run_forward_again_in_backward(name, mode):
    model, _, x, y = build(name, mode)
    blocks = checkpointing.blocks(model)
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):  # the block's first layer runs once per run of the block's forward
        first = next(block.children())
        first.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    F.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
    # selective: every second block, from the second (as torchtitan's layer-selective option counts)
    recomputed = [mode == "full" or (mode == "selective" and i % 2 == 1) for i in range(len(blocks))]
    assert calls == [2 if r else 1 for r in recomputed]
    assert [checkpointing.is_checkpointed(b) for b in blocks] == recomputed


@pytest.mark.parametrize("name", ["gpt", "resnet20"])
def test_names_order_and_state_dict_keys_unchanged(name):
    plain, *_ = build(name)
    wrapped, *_ = build(name, "full")
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in wrapped.named_modules()] == [n for n, _ in plain.named_modules()]
    plain.load_state_dict(wrapped.state_dict())  # strict both ways: checkpoints are interchangeable
    wrapped.load_state_dict(plain.state_dict())


def test_applying_twice_and_deepcopy():
    model, *_ = build("gpt")
    assert checkpointing.apply(model, "selective") == 2
    assert checkpointing.apply(model, "full") == 4  # the already checkpointed blocks are not wrapped twice
    twin = copy.deepcopy(model)
    for block in checkpointing.blocks(twin):  # the copy's forward runs the copy's block, not the original's
        assert block.forward.args[0] is block


def test_models_without_blocks_are_refused():
    mlp = models.build(config.MLPConfig(hidden=[8]), DataSpec((30,), 2))
    assert checkpointing.apply(mlp, "none") == 0
    with pytest.raises(ConfigError, match=r"train\.activation_checkpointing = 'full'.*\(MLP\).*gpt, resnet20"):
        checkpointing.apply(mlp, "full")


def test_config_field():
    from hpc_dl.training import trainer

    assert config.load(None, []).train.activation_checkpointing == "none"
    assert config.load(None, ["train.activation_checkpointing=selective"]).train.activation_checkpointing == "selective"
    with pytest.raises(ConfigError, match="train.activation_checkpointing"):
        config.load(None, ["train.activation_checkpointing=some"])
    assert "train.activation_checkpointing" in trainer._FREE_ON_RESUME  # a resume may switch it
