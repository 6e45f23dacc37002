"""Data sets, splits and the resumable batch stream."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from hpc_dl import config, data
from hpc_dl.data.loader import BatchStream, eval_batches
from hpc_dl.errors import ConfigError


def _indices(dataset):
    return dataset.indices if hasattr(dataset, "indices") else None


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_splits_are_disjoint_fixed_by_split_seed_and_stratified(name):
    cfg = config.load(None, [f"data.name={name}"]).data
    a, b = data.build(cfg), data.build(cfg)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
    rows = {s: {tuple(r.flatten().tolist()) for r in getattr(a, s).tensors[0]} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    n = sum(len(getattr(a, s)) for s in ("train", "val", "test"))
    assert n == {"digits": 1797, "breast_cancer": 569}[name]
    assert len(a.test) == pytest.approx(n * cfg.test_fraction, abs=2)
    other = data.build(config.load(None, [f"data.name={name}", "data.split_seed=1"]).data)
    assert not torch.equal(other.test.tensors[0], a.test.tensors[0])
    # stratified: class shares in test within 3 points of the whole set
    y_all = torch.cat([getattr(a, s).tensors[1] for s in ("train", "val", "test")])
    for c in y_all.unique():
        share = (y_all == c).float().mean().item()
        assert (a.test.tensors[1] == c).float().mean().item() == pytest.approx(share, abs=0.03)


def test_tabular_scaling_uses_training_statistics_only():
    splits = data.build(config.load(None, ["data.name=breast_cancer"]).data)
    x_train, x_test = splits.train.tensors[0], splits.test.tensors[0]
    assert torch.allclose(x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert not torch.allclose(x_test.mean(0), torch.zeros(30), atol=1e-3)  # test stats were not used
    assert splits.spec.task == "binary" and splits.spec.num_outputs == 1 and len(splits.spec.feature_names) == 30

    mm = data.build(config.load(None, ["data.name=breast_cancer", "data.scaling=minmax"]).data)
    assert mm.train.tensors[0].min() == 0 and mm.train.tensors[0].max() == 1


def test_digits_are_images_with_ten_classes():
    splits = data.build(config.load().data)
    assert splits.train.tensors[0].shape[1:] == (1, 8, 8) and splits.spec.num_outputs == 10
    assert splits.train.tensors[0].mean().abs() < 1e-5


def _stream(n=103, batch=10, seed=3, rank=0, world=1):
    ds = TensorDataset(torch.arange(n), torch.arange(n))
    return BatchStream(ds, batch, seed, rank, world)


def _take(stream, k):
    it = iter(stream)
    return [next(it)[0] for _ in range(k)]


def test_stream_covers_each_sample_at_most_once_per_epoch_and_reshuffles():
    s = _stream()
    assert s.batches_per_epoch == 10  # 103 // 10, the tail of 3 is dropped
    batches = _take(s, 20)
    first, second = torch.cat(batches[:10]), torch.cat(batches[10:])
    assert len(first.unique()) == 100 and len(second.unique()) == 100
    assert not torch.equal(first, second)
    assert s.state_dict() == {"epoch": 2, "batch": 0, "samples": 0}


def test_stream_resumes_mid_epoch_exactly():
    whole = _take(_stream(), 25)
    s = _stream()
    _take(s, 13)
    resumed = _stream()
    resumed.load_state_dict(s.state_dict())
    assert resumed.state_dict() == {"epoch": 1, "batch": 3, "samples": 30}
    for a, b in zip(_take(resumed, 12), whole[13:]):
        assert torch.equal(a, b)


def test_ranks_get_disjoint_equal_shards_of_the_same_permutation():
    shards = [torch.cat(_take(_stream(n=103, batch=5, rank=r, world=3), 6)) for r in range(3)]
    assert all(len(s) == 30 for s in shards)  # 103 // 3 = 34 per rank -> 6 whole batches
    assert len(torch.cat(shards).unique()) == 90


def test_batch_larger_than_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"= 500 samples per step: more than the 103 training samples"):
        _stream(batch=500)


def test_eval_batches_shard_cover_every_sample_once():
    ds = TensorDataset(torch.arange(11), torch.arange(11))
    seen = [x for r in range(3) for x, _ in eval_batches(ds, 4, r, 3)]
    assert sorted(torch.cat(seen).tolist()) == list(range(11))


def test_split_indices_are_a_partition():
    labels = np.repeat([0, 1], 50)
    tr, va, te = data.split_indices(labels, 0.2, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    assert (len(tr), len(va), len(te)) == (60, 20, 20)


def test_every_name_a_config_section_accepts_has_a_loader_or_a_model():
    """The names live once, in the config sections; the registries are built from them."""
    import typing

    from hpc_dl import config, models

    data_names = {n for section in typing.get_args(config.DataConfig) for n in config.names(section)}
    model_names = {n for section in typing.get_args(config.ModelConfig) for n in config.names(section)}
    assert set(data.LOADERS) == data_names and set(models.MODELS) == model_names
    assert {"resnet110", "vgg16", "googlenet"} <= model_names


def _steps(world: int, batch: int, accum: int, steps: int, state=None, n=103, seed=3) -> tuple[list[set], dict]:
    """The sample ids each optimizer step takes over all ranks, and the position after them."""
    streams = [BatchStream(TensorDataset(torch.arange(n)), batch, seed, r, world, accum=accum) for r in range(world)]
    for s in streams:
        if state:
            s.load_state_dict(state)
    its = [iter(s) for s in streams]
    taken = [{int(i) for it in its for _ in range(accum) for i in next(it)[0]} for _ in range(steps)]
    return taken, streams[0].state_dict()


@pytest.mark.parametrize("then", [(1, 6, 2), (3, 4, 1), (4, 3, 1), (1, 12, 1)])
def test_a_stream_resumed_on_another_world_size_takes_the_same_samples_per_step(then):
    """12 samples per step: 2 ranks x 6, then (ranks, batch, accum) of the same product. Over three
    epochs (8 steps of 12 of 103 samples each: the tail of 7 is dropped), every step takes the same
    sample ids as an uninterrupted run, so none is seen twice or skipped."""
    whole, _ = _steps(2, 6, 1, 24)
    first, position = _steps(2, 6, 1, 11)  # stopped in the second epoch
    assert position == {"epoch": 1, "batch": 3, "samples": 36}
    rest, _ = _steps(*then, 13, state=position)
    assert first + rest == whole
    assert all(len(step) == 12 for step in whole)
    for epoch in range(3):
        ids = set().union(*whole[8 * epoch : 8 * epoch + 8])
        assert len(ids) == 96  # each sample at most once per epoch


def test_an_epoch_is_whole_optimizer_steps_with_accumulation():
    s = BatchStream(TensorDataset(torch.arange(103)), 10, 3, accum=3)
    assert s.batches_per_epoch == 9  # 3 steps of 30; not 10 micro-batches, which would split a step
    with pytest.raises(ValueError, match="not a whole number of this run's micro-batches"):
        s.load_state_dict({"epoch": 0, "batch": 0, "samples": 15})
