"""Small data sets on local disk for the loader part of the GPU acceptance run: CIFAR-10's
official python format (pickled batches) and an ImageNet-style tree of JPEGs.

The JPEGs are 500x375 (ImageNet's most common size) with texture at a quarter of the
resolution, so decoding costs about what a photo does; flat or pure-noise images would
decode faster or slower than real data.

  python benchmarks/gpu/make_data.py --out /tmp/data --cifar-per-batch 3200 --images-per-class 680
"""

import argparse
import os
import pickle
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [f"class{i:02d}" for i in range(10)]


def cifar10(root: Path, per_batch: int) -> Path:
    """data_batch_1..5 and test_batch (N x 3072 uint8 rows, channel-major) plus batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": pixels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return folder


def _jpeg(job: tuple[str, int, int, int]) -> None:
    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)


def imagefolder(root: Path, per_class: int, width: int, height: int) -> Path:
    """root/train/<class>/*.jpg with per_class images, root/val/<class>/ with an eighth as many."""
    jobs = []
    for split, count in (("train", per_class), ("val", max(1, per_class // 8))):
        for name in CLASSES:
            folder = root / "imagefolder" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(str(folder / f"{i:05d}.jpg"), len(jobs) + i, width, height) for i in range(count)]
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_jpeg, jobs, chunksize=16)
    return root / "imagefolder"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cifar-per-batch", type=int, default=3200, help="images in each of the 6 CIFAR batch files")
    p.add_argument("--images-per-class", type=int, default=680, help="JPEGs per class in train/ (10 classes)")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    args = p.parse_args()
    print(cifar10(args.out, args.cifar_per_batch))
    print(imagefolder(args.out, args.images_per_class, args.width, args.height))


if __name__ == "__main__":
    main()
