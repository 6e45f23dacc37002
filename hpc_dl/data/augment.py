"""Image augmentation, configured by ``data.augment``.

Two ways to run the same recipe (random crop after zero-padding, horizontal flip,
colour jitter, random erasing, then per-data-set normalisation):

- ``sample_transform``: torchvision ``transforms.v2`` on each image in the loader
  workers (the default);
- ``BatchAugment``: on whole batches on the training device, each image with its
  own random draw, for GPU runs where CPU workers would starve the GPU.

Images enter as uint8 (C, H, W) tensors and leave as normalised float32.
"""

import torch


def sample_transform(aug, mean, std, train: bool, geometry: list | None = None):
    """Per-image pipeline (a v2.Compose). ``geometry``: the data set's own resize/crop steps (e.g. ImageFolder's)."""
    from torchvision.transforms import v2  # imported when an image pipeline is built: torchvision is slow to load

    steps = list(geometry or [])
    random = train or aug.eval
    if random and aug.crop_padding:
        steps.append(_PadCrop(aug.crop_padding))
    if random and aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if random and aug.color_jitter:
        s = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if random and aug.erasing:
        steps.append(v2.RandomErasing(p=aug.erasing, value=0))
    return v2.Compose(steps)


class _PadCrop:
    """v2.RandomCrop of the input's own size after zero padding (its size is per data set)."""

    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, img):
        from torchvision.transforms import v2

        return v2.RandomCrop(tuple(img.shape[-2:]), padding=self.padding)(img)


class BatchAugment:
    """The same recipe on a (N, C, H, W) uint8 or [0, 1] float batch, per-image random draws."""

    def __init__(self, aug, mean, std):
        self.aug = aug
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        a, n = self.aug, x.shape[0]
        if train or a.eval:
            if a.crop_padding:
                x = self._pad_crop(x, a.crop_padding)
            if a.hflip:
                flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
                x = torch.where(flip, x.flip(-1), x)
            if a.color_jitter:
                x = self._jitter(x, a.color_jitter)
        self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)  # moved once, then cached
        x = (x - self.mean) / self.std
        if (train or a.eval) and a.erasing:
            x = self._erase(x, a.erasing)
        return x

    @staticmethod
    def _pad_crop(x, p):
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    @staticmethod
    def _jitter(x, s):
        def factor():
            return torch.empty(x.shape[0], 1, 1, 1, device=x.device).uniform_(1 - s, 1 + s)

        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        if x.shape[1] == 3:
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
            x = (x - grey) * factor() + grey  # saturation
        return x.clamp(0, 1)

    @staticmethod
    def _erase(x, p):
        # torchvision's default recipe: area 2-33 % of the image, aspect ratio 0.3-3.3
        n, _, h, w = x.shape
        area = torch.empty(n, device=x.device).uniform_(0.02, 0.33) * h * w
        ratio = torch.exp(torch.empty(n, device=x.device).uniform_(-1.2, 1.2))
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        top = (torch.rand(n, device=x.device) * (h - eh + 1)).long()
        left = (torch.rand(n, device=x.device) * (w - ew + 1)).long()
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside = ((ys[None, :] >= top[:, None]) & (ys[None, :] < (top + eh)[:, None]))[:, :, None] & (
            (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + ew)[:, None])
        )[:, None, :]
        chosen = (torch.rand(n, device=x.device) < p)[:, None, None]
        return x.masked_fill((inside & chosen)[:, None], 0.0)
