"""Augmentation: per-sample transforms.v2 in the loader, and the batched on-device version."""

import pytest
import torch
import torch.nn.functional as F

from hpc_dl.config import AugmentConfig
from hpc_dl.data.augment import BatchAugment, sample_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _image(seed=0):
    return torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _normalised(img):
    return (img.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _windows(img, p):
    """Every crop of the original size from the zero-padded image, normalised."""
    padded = F.pad(img.float(), (p, p, p, p))
    h, w = img.shape[-2:]
    return [_normalised(padded[:, dy : dy + h, dx : dx + w]) for dy in range(2 * p + 1) for dx in range(2 * p + 1)]


def _one_of(out, candidates):
    return any(torch.allclose(out, c, atol=1e-5) for c in candidates)


both = pytest.mark.parametrize("batched", [False, True], ids=["transforms.v2", "on-device"])


def _run(aug, img, batched, train=True, n=1):
    if batched:
        return BatchAugment(aug, MEAN, STD)(img.expand(n, -1, -1, -1).clone(), train)
    tf = sample_transform(aug, MEAN, STD, train)
    return torch.stack([tf(img) for _ in range(n)])


@both
def test_evaluation_only_normalises(batched):
    img = _image()
    aug = AugmentConfig(crop_padding=4, hflip=True, color_jitter=0.5, erasing=1.0)
    out = _run(aug, img, batched, train=False, n=3)
    assert all(torch.allclose(o, _normalised(img), atol=1e-5) for o in out)


@both
def test_flip_gives_the_image_or_its_mirror_both_seen(batched):
    img = _image()
    torch.manual_seed(0)
    out = _run(AugmentConfig(hflip=True), img, batched, n=40)
    plain, mirror = _normalised(img), _normalised(img.flip(-1))
    kinds = [torch.allclose(o, plain, atol=1e-5) for o in out]
    assert all(k or torch.allclose(o, mirror, atol=1e-5) for k, o in zip(kinds, out))
    assert 0 < sum(kinds) < 40


@both
def test_crop_with_padding_is_a_window_of_the_padded_image(batched):
    img = _image()
    torch.manual_seed(1)
    out = _run(AugmentConfig(crop_padding=2), img, batched, n=20)
    windows = _windows(img, 2)
    assert all(_one_of(o, windows) for o in out)
    assert len({tuple(o.flatten()[:40].tolist()) for o in out}) > 3  # each image its own offset


@both
def test_random_erasing_zeroes_one_rectangle(batched):
    img = _image().clamp(min=200)  # no pixel normalises to exactly 0 by chance
    torch.manual_seed(2)
    out = _run(AugmentConfig(erasing=1.0), img, batched, n=10)
    for o in out:
        zero = (o == 0).all(0)
        assert zero.any()
        rows, cols = zero.nonzero(as_tuple=True)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # one filled rectangle


@both
def test_colour_jitter_changes_values_within_range(batched):
    img = _image()
    torch.manual_seed(3)
    out = _run(AugmentConfig(color_jitter=0.4), img, batched, n=5)
    assert not any(torch.allclose(o, _normalised(img), atol=1e-3) for o in out)
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (out >= low.view(1, 3, 1, 1) - 1e-5).all() and (out <= high.view(1, 3, 1, 1) + 1e-5).all()


def test_on_device_augmentation_follows_the_seed():
    batch = torch.stack([_image(i) for i in range(8)])
    aug = BatchAugment(AugmentConfig(crop_padding=4, hflip=True, color_jitter=0.3, erasing=0.5), MEAN, STD)
    torch.manual_seed(7)
    a = aug(batch, True)
    torch.manual_seed(7)
    assert torch.equal(a, aug(batch, True))
