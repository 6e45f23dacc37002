"""A trained model as a program: ``hpc-dl export RUN_DIR`` writes ``RUN_DIR/export/``.

  model.pt2       torch.export program: raw input -> class probabilities (a regression model: the
                  predicted number in the target's units, one column), with the run's preprocessing
                  inside the graph (scaler statistics, resizing, normalisation; the target's scaling undone)
  model.onnx      the same graph for ONNX runtimes, when torch's ONNX exporter (onnxscript) is installed
  predictor.json  what the input is (feature columns, image size), class names (regression: ``task``
                  and the ``target`` column's name, also the one name in ``classes``), where it came
                  from; for images, intensity statistics of the training images (predict warns about
                  unlike input)

Raw input means what a user has: table rows in the original units, or images as floats
in [0, 1] at the data set's own size (decoding and resizing image files happens before
the graph, in ``predict``). Everything learnt from the training data is in the graph.
"""

import contextlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hpc_dl import __version__
from hpc_dl.data.spec import Transformed
from hpc_dl.errors import UserError
from hpc_dl.fileio import write_json
from hpc_dl.training.weights import load_run

PROGRAM, ONNX, META = "model.pt2", "model.onnx", "predictor.json"


class Predictor(nn.Module):
    """Raw input -> preprocessing -> model -> probabilities over the classes; for a regression
    model (``prep`` has ``target_shift`` and ``target_scale``) the prediction in the target's units."""

    def __init__(self, model: nn.Module, binary: bool, inputs: dict, prep: dict):
        super().__init__()
        self.model, self.binary, self.kind = model, binary, inputs["kind"]
        self.regression = "target_scale" in prep
        if self.regression:
            self.target_shift, self.target_scale = float(prep["target_shift"]), float(prep["target_scale"])
        if self.kind == "table":
            self.register_buffer("shift", torch.tensor(prep["shift"], dtype=torch.float32))
            self.register_buffer("scale", torch.tensor(prep["scale"], dtype=torch.float32))
        else:
            self.register_buffer("mean", torch.tensor(prep["mean"], dtype=torch.float32).view(-1, 1, 1))
            self.register_buffer("std", torch.tensor(prep["std"], dtype=torch.float32).view(-1, 1, 1))
            self.resize, self.repeat = prep.get("resize"), prep.get("repeat", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "table":
            x = (x - self.shift) / self.scale
        else:
            if self.resize:  # as the data set upsampled its images for the model
                x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            if self.repeat > 1:  # grey repeated to the channels the model was built for
                x = x.repeat(1, self.repeat, 1, 1)
            x = (x - self.mean) / self.std
        if self.regression:  # the model predicts the standardised target
            return self.model(x).float() * self.target_scale + self.target_shift
        return probabilities(self.model(x).float(), self.binary)


def probabilities(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    """Class probabilities from the model's logits; a binary model has one logit, that of the second class."""
    if binary:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return logits.softmax(-1)


def describe(cfg, spec) -> tuple[dict, dict]:
    """(what the raw input is, the preprocessing the graph applies) for the run's data set."""
    d, pre = cfg.data, spec.preprocessing
    if d.name == "breast_cancer":
        return {"kind": "table", "numeric": spec.feature_names, "categorical": {}}, pre
    if d.name == "csv":
        onehot = {c: [n.split("=", 1)[1] for n in spec.feature_names if n.startswith(c + "=")] for c in d.categorical}
        ones = sum(len(v) for v in onehot.values())
        prep = {"shift": pre["shift"] + [0.0] * ones, "scale": pre["scale"] + [1.0] * ones}
        prep |= {k: pre[k] for k in ("target_shift", "target_scale") if k in pre}  # regression
        return {"kind": "table", "numeric": pre["numeric"], "categorical": onehot}, prep
    if d.name == "digits":
        prep = {**pre, "resize": d.image_size if d.image_size != 8 else None, "repeat": d.channels}
        return {"kind": "image", "channels": 1, "size": 8, "note": "grey, bright ink on dark"}, prep
    if d.name in ("cifar10", "cifar100"):
        return {"kind": "image", "channels": 3, "size": 32}, pre
    if d.name == "imagefolder":
        # ImageFolder's evaluation geometry: shorter side to size*256/224, then a centre crop
        return {"kind": "image", "channels": 3, "size": d.image_size, "resize": round(d.image_size * 256 / 224)}, pre
    raise UserError(
        f"data.name = '{d.name}': export needs a model of table rows or images "
        "(breast_cancer, csv, digits, cifar10, cifar100, imagefolder)"
    )


def build(run_dir) -> tuple[Predictor, dict, object]:
    """The Predictor of a finished run, its description, and the run's data splits."""
    cfg, splits, model, weights = load_run(run_dir)
    spec = splits.spec
    if spec.task == "lm":
        raise UserError(f"{run_dir}: a language model; export takes classifiers (table rows or images)")
    inputs, prep = describe(cfg, spec)
    meta = {
        "hpc_dl": __version__,
        "torch": torch.__version__,
        "run_dir": str(run_dir),
        "weights": str(weights),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "classes": spec.class_names or [str(i) for i in range(spec.num_classes)],
        "inputs": inputs,
    }
    if spec.task == "regression":  # one output: the target, a number in its own units
        target = spec.preprocessing.get("target", "prediction")
        meta |= {"task": "regression", "target": target, "classes": [target]}
    return Predictor(model, spec.task == "binary", inputs, prep).eval(), meta, splits


def example(meta: dict, n: int = 2) -> torch.Tensor:
    ins = meta["inputs"]
    if ins["kind"] == "table":
        return torch.zeros(n, len(ins["numeric"]) + sum(len(v) for v in ins["categorical"].values()))
    return torch.rand(n, ins["channels"], ins["size"], ins["size"])


def intensities(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (N x C x H x W, 0 black, 1 white), in grey: mean, border (the mean of the outermost
    pixels: the background of a centred subject), min and max."""
    grey = images.float().mean(1)
    border = torch.cat([grey[:, 0], grey[:, -1], grey[:, 1:-1, 0], grey[:, 1:-1, -1]], 1)
    return {"mean": grey.mean((1, 2)), "border": border.mean(1), "min": grey.amin((1, 2)), "max": grey.amax((1, 2))}


def unaugmented_train(splits):
    """The training split as evaluation sees it: without random crops, flips or jitter."""
    train, val = splits.train, splits.val
    if isinstance(train, Transformed) and isinstance(val, Transformed):
        return Transformed(train.dataset, val.transform)
    return train  # tensors, or augmented by the device on whole batches


def training_images(predictor: Predictor, splits, n: int = 256) -> dict:
    """Intensity statistics of up to n training images as raw input, for predict to warn about an
    input unlike them (inverted, or low contrast): the means of the images' mean and border, the
    medians of their min and max, and min_span, the 5th percentile of max - min."""
    train = unaugmented_train(splits)  # augmented, padded crops would add black borders
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    x = torch.stack([train[int(i)][0] for i in picked])
    # bytes when the device augments (the loader hands them out), else normalised floats
    x = x / 255 if x.dtype == torch.uint8 else x * predictor.std + predictor.mean
    s = intensities(x)
    stats = {"mean": s["mean"].mean(), "border_mean": s["border"].mean(), "low": s["min"].median(),
             "high": s["max"].median(), "min_span": (s["max"] - s["min"]).quantile(0.05)}  # fmt: skip
    return {"images": len(x), **{k: round(float(v), 4) for k, v in stats.items()}}


def export(run_dir, onnx: bool = True) -> list[Path]:
    """Write the run's inference artefacts; returns the files written."""
    predictor, meta, splits = build(run_dir)
    out = Path(run_dir) / "export"
    out.mkdir(exist_ok=True)
    x = example(meta)
    batch = {"x": {0: torch.export.Dim.DYNAMIC}}  # any number of rows or images
    with torch.no_grad():
        program = torch.export.export(predictor, (x,), dynamic_shapes=batch)
    torch.export.save(program, out / PROGRAM)
    written = [out / PROGRAM]
    meta["files"] = {"program": PROGRAM}
    if onnx and _onnx_exporter():
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter narrates each pass
            torch.onnx.export(predictor, (x,), dynamic_shapes=batch, dynamo=True, input_names=["x"],
                              output_names=["prediction" if predictor.regression else "probabilities"],
                              ).save(out / ONNX)  # fmt: skip
        written.append(out / ONNX)
        meta["files"]["onnx"] = ONNX
    if meta["inputs"]["kind"] == "image":
        meta["training_images"] = training_images(predictor, splits)
    write_json(out / META, meta)
    return [*written, out / META]


def _onnx_exporter() -> bool:
    try:
        import onnxscript  # noqa: F401  torch's ONNX exporter is built on it
    except ImportError:
        return False
    return True
