"""``hpc-dl predict RUN_DIR INPUT...``: the run's model as a program, on CSV rows or image files.

Runs the module that ``hpc-dl export`` exports (export.Predictor: preprocessing, model,
probabilities), rebuilt from the run's config.yaml and its weights read with
``weights_only=True``, so it prints what the exported program gives. ``RUN_DIR/export/model.pt2``
is never loaded: ``torch.export.load`` unpickles parts of the archive with ``weights_only=False``,
so a planted or tampered file would run code here. The export is still written (first, when
missing or older than the run's weights) for other programs.

An image unlike the training images (inverted, or of little contrast) gets a warning: the model
answers confidently on such input, and wrongly. predictor.json holds the training images'
statistics; an export written before it did gives no warnings.
"""

import json
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from hpc_dl.course import export
from hpc_dl.data.tabular import MISSING, number, read_csv
from hpc_dl.errors import UserError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
STATISTICS = ("mean", "border_mean", "low", "high", "min_span")  # export.training_images


def load(run_dir) -> tuple[torch.nn.Module, dict]:
    """The run's Predictor and its description, with the training images' statistics when the
    export has them; the export (predictor.json, model.pt2) is written first when missing or older
    than the run's latest weights (a resumed run)."""
    predictor, meta, _ = export.build(run_dir)
    path = Path(run_dir) / "export" / export.META
    saved = _read_json(path)
    fresh = isinstance(saved, dict) and saved.get("weights") == meta["weights"]
    if not fresh or not path.with_name(export.PROGRAM).is_file():
        export.export(run_dir, onnx=False)
        saved = _read_json(path)
    stats = saved.get("training_images") if isinstance(saved, dict) else None
    usable = isinstance(stats, dict) and all(isinstance(stats.get(k), (int, float)) for k in STATISTICS)
    meta["training_images"] = stats if usable else None
    return predictor, meta


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing or not JSON: written anew
        return None


def read_table(path: Path, inputs: dict) -> tuple[torch.Tensor, list[str]]:
    """Rows of a CSV file with a header naming the feature columns (others, e.g. the label, are ignored)."""
    header, rows = read_csv(path)
    needed = inputs["numeric"] + list(inputs["categorical"])
    missing = [c for c in needed if c not in header]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{path}: the model needs column(s) {shown}, not in the header")
    where = {c: header.index(c) for c in needed}
    out, names = [], []
    for line, row in rows:
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        values = []
        for c in inputs["numeric"]:
            cell = row[where[c]].strip()
            if cell.lower() in MISSING:
                raise UserError(f"{path} line {line}: column '{c}' is missing ('{cell}')")
            try:
                values.append(number(cell))
            except ValueError as e:
                raise UserError(f"{path} line {line}: column '{c}' = '{cell}' {e}") from None
        for c, seen in inputs["categorical"].items():
            cell = row[where[c]].strip()
            if cell not in seen:
                raise UserError(f"{path} line {line}: column '{c}' = '{cell}' was not seen in training ({seen})")
            values += [float(cell == v) for v in seen]
        out.append(values)
        names.append(f"{path.name}:{line}")
    return torch.tensor(out, dtype=torch.float32), names


def read_image(path: Path, inputs: dict) -> torch.Tensor:
    """One image file -> floats in [0, 1] at the size the program takes."""
    try:
        with Image.open(path) as f:
            img = v2.functional.pil_to_tensor(f.convert("L" if inputs["channels"] == 1 else "RGB"))
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise UserError(f"{path}: not a readable image ({first_line(e, 120)})") from None
    size = inputs["size"]
    steps = [v2.Resize(inputs["resize"], antialias=True), v2.CenterCrop(size)] if inputs.get("resize") else [
        v2.Resize((size, size), antialias=True)
    ]  # fmt: skip
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])(img)


def read(paths: list[str], inputs: dict) -> tuple[torch.Tensor, list[str]]:
    batches, names = [], []
    for p in map(Path, paths):
        if p.is_dir():
            kind = "CSV files" if inputs["kind"] == "table" else "image files"
            raise UserError(f"{p}: a folder; give the {kind} in it (e.g. {p / '*'})")
        if not p.is_file():
            raise UserError(f"{p}: no such file")
        if inputs["kind"] == "table":
            if p.suffix.lower() in IMAGE_SUFFIXES:
                raise UserError(f"{p}: an image, but this model takes CSV files (a header naming its feature columns)")
            x, n = read_table(p, inputs)
            batches.append(x)
            names += n
        else:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{p}: this model takes image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            batches.append(read_image(p, inputs)[None])
            names.append(p.name)
    return torch.cat(batches), names


def unlike_training(x: torch.Tensor, names: list[str], stats: dict | None) -> list[list[str]]:
    """For each image (floats in [0, 1]), what makes it unlike the training images (without stats: nothing)."""
    if stats is None:
        return [[] for _ in names]
    s = export.intensities(x)
    found = []
    for i, name in enumerate(names):
        lines = []
        if _inverted(stats, float(s["mean"][i]), float(s["border"][i])):
            theirs, ours = "light strokes on a dark background", "dark strokes on a light background"
            if stats["border_mean"] > stats["mean"]:
                theirs, ours = ours, theirs
            lines.append(f"{name} looks inverted ({ours}; the model was trained on {theirs}): "
                         "predictions are unreliable; invert it")  # fmt: skip
        lo, hi = float(s["min"][i]), float(s["max"][i])
        if hi - lo < stats["min_span"] / 2:  # e.g. digits saved with their 0..16 values: nearly black
            lines.append(f"{name} has intensities from {lo:.2f} to {hi:.2f} (0 black, 1 white); the model was "
                         f"trained on images from {stats['low']:.2f} to {stats['high']:.2f}: predictions are "
                         "unreliable; stretch its contrast to that range")  # fmt: skip
        found.append(lines)
    return found


def _inverted(stats: dict, mean: float, border: float) -> bool:
    """The training images' background (their border) is clearly darker than their mean, or lighter;
    the image's border is the other way round, against its own mean and the training images'.
    Training images without a consistent background (photos) make nothing inverted."""
    side = stats["mean"] - stats["border_mean"]
    if abs(side) < 0.05:
        return False
    return side * (mean - border) < 0 and side * (stats["mean"] - border) < 0


def predict(run_dir, paths: list[str], top_k: int = 3) -> list[dict]:
    """For each row or image: its name, the top-k (class, probability) pairs and the warnings
    about it (an image unlike the training images). A regression model's row has ``prediction``,
    the number in the target's units, and as ``top`` the one pair (target column, prediction)."""
    predictor, meta = load(run_dir)
    if not paths:
        raise UserError("give at least one CSV file or image file")
    x, names = read(paths, meta["inputs"])
    with torch.no_grad():
        probs = torch.cat([predictor(chunk) for chunk in x.split(256)])
    if meta.get("task") == "regression":
        return [{"input": name, "prediction": float(v), "top": [[meta["target"], float(v)]], "warnings": []}
                for name, v in zip(names, probs[:, 0].tolist())]  # fmt: skip
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = meta["classes"]
    image = meta["inputs"]["kind"] == "image"
    warnings = unlike_training(x, names, meta["training_images"]) if image else [[] for _ in names]
    return [
        {"input": name, "top": [[classes[i], round(float(p), 6)] for p, i in zip(ps.tolist(), ix.tolist())],
         "warnings": w}
        for name, ps, ix, w in zip(names, top.values, top.indices, warnings)
    ]  # fmt: skip
