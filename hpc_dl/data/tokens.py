"""Token streams for language modelling.

A file is a flat array of token ids (uint16 or uint32), as nanoGPT's prepare
scripts write ``train.bin``; it is memory-mapped, so a corpus larger than memory
costs nothing to open. Sample i is the window starting at i * stride: the inputs
are block_size ids and the targets the same window shifted by one.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hpc_dl.data.spec import DataSpec, Splits
from hpc_dl.errors import UserError

CORPUS = Path(__file__).parent / "corpus" / "verse.txt"


class TokenWindows(Dataset):
    def __init__(self, tokens: np.ndarray, block_size: int, stride: int):
        self.tokens, self.block, self.stride = tokens, block_size, stride
        self.n = max(0, (len(tokens) - block_size - 1) // stride + 1)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        start = i * self.stride
        window = torch.from_numpy(self.tokens[start : start + self.block + 1].astype(np.int64))
        return window[:-1], window[1:]


def _memmap(path: Path, dtype: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if not path.is_file():
        raise UserError(f"data.path: token file {path} not found")
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        raise UserError(f"data.path = '{path}': the token file is empty")
    if path.stat().st_size % size:
        raise UserError(f"{path}: {path.stat().st_size} bytes is not a whole number of {dtype} ids (data.dtype?)")
    return np.memmap(path, dtype=dtype, mode="r")


def char_corpus() -> tuple[np.ndarray, list[str]]:
    """The built-in corpus (public-domain verse) as character ids, and the characters."""
    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    return np.array([lookup[c] for c in text], dtype=np.uint16), chars


def tokens(cfg) -> Splits:
    names: list[str] = []
    if cfg.path is None:
        stream, names = char_corpus()
        parts = _contiguous(stream, cfg)
    elif Path(cfg.path).is_dir():  # nanoGPT layout; ImageNet-like, test falls back to val
        folder = Path(cfg.path)
        test = folder / "test.bin" if (folder / "test.bin").is_file() else folder / "val.bin"
        parts = [_memmap(folder / f, cfg.dtype) for f in ("train.bin", "val.bin")] + [_memmap(test, cfg.dtype)]
    else:
        parts = _contiguous(_memmap(Path(cfg.path), cfg.dtype), cfg)
    largest = max(int(p.max()) for p in parts if len(p))
    vocab = cfg.vocab_size or (len(names) if names else largest + 1)
    if largest >= vocab:
        raise UserError(f"data.vocab_size = {vocab}: the data holds token id {largest}")
    stride = cfg.stride or cfg.block_size
    sets = [TokenWindows(p, cfg.block_size, stride) for p in parts]
    for split, s in zip(("train", "val", "test"), sets):
        if len(s) == 0:
            raise UserError(
                f"data.block_size = {cfg.block_size}: the {split} split has fewer than {cfg.block_size + 1} tokens"
            )
    spec = DataSpec(
        (cfg.block_size,), vocab, class_names=names, task="lm", preprocessing={"chars": names} if names else {}
    )
    return Splits(*sets, spec=spec)


def _contiguous(stream: np.ndarray, cfg) -> list[np.ndarray]:
    """Split one stream into train/val/test by position (random windows would leak text)."""
    n = len(stream)
    a, b = int(n * (1 - cfg.val_fraction - cfg.test_fraction)), int(n * (1 - cfg.test_fraction))
    return [stream[:a], stream[a:b], stream[b:]]
