"""The Python API, for notebooks and scripts: the same runs as ``hpc-dl train``, with the model
and its metrics handed back.

    import hpc_dl
    run = hpc_dl.train("digits_lenet5", {"train.steps": 200})
    run.history            # the metrics, a pandas DataFrame
    run.summary["test"]    # what summary.json holds
    run.model              # the trained nn.Module
    run.predict(["seven.png"]); run.explain(); run.export()
    again = hpc_dl.load(run.run_dir)

Config, overrides and every error are the CLI's (UserError with the field named). A run gets a
fresh run directory each time, so re-running a cell trains again; ``resume="auto"`` with the
same ``run_dir`` continues (or, when finished, just loads) an earlier run instead.
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpc_dl import config as configs
from hpc_dl.errors import UserError


def train(config=None, overrides=None, *, model=None, data=None, classes=None, run_dir=None, resume=None,
          processes: int = 1) -> "Run":  # fmt: skip
    """Train and return the finished ``Run``.

    config: None (the embedded default), a YAML path, a shipped config's name (``"digits_lenet5"``)
        or a nested dict (``{"model": {"name": "mlp"}, "train": {"steps": 50}}``).
    overrides: dotted ``{"optim.lr": 0.01}`` or CLI-style ``["optim.lr=0.01"]``, applied after ``config``.
    model: an ``nn.Module`` of your own, trained instead of ``model.name`` (its outputs: one per
        class, one logit for two classes, one value for a regression).
    data: a ``Dataset`` of (input, label) pairs of your own, or (train, val[, test]) Datasets, or
        a dict of them; instead of ``data.name``. ``classes``: its class names, when it has no
        ``classes`` attribute.
    run_dir, resume: as ``--run-dir`` and ``--resume`` (``"auto"`` or a path).
    processes: train on this many local processes with DDP (``torchrun``; a config's model and
        data only), then load the result.
    """
    cfg = _config(config, overrides)
    if processes > 1:
        if model is not None or data is not None:
            raise UserError("processes > 1 starts new processes, which cannot receive your model or "
                            "data objects: put them in a config, or train with processes=1")  # fmt: skip
        return _torchrun(cfg, processes, run_dir, resume)
    from hpc_dl.data import custom
    from hpc_dl.training.run import Own
    from hpc_dl.training.run import train as run_training

    d = cfg.data
    splits = custom.splits(data, d.val_fraction, d.test_fraction, d.split_seed, classes) if data is not None else None
    own = Own(model, splits, type(custom.root(splits.train)).__name__ if splits else "data")
    summary = run_training(cfg, run_dir=run_dir, resume=resume, own=own)
    if model is not None or data is not None:  # the config's model or data section did not make it
        _note_own(summary, own, model is not None, data is not None)
    return Run(Path(summary["run_dir"]), summary, own.model.eval() if own.model else None, own.splits)


def _note_own(summary: dict, own, model: bool, data: bool) -> None:
    """summary.json says what the config does not describe, and what predict needs without it."""
    from hpc_dl.fileio import write_json

    spec = own.splits.spec
    classes = [] if spec.task == "regression" else spec.class_names or [str(i) for i in range(spec.num_classes)]
    summary.update(own_model=model, own_data=data, task=spec.task, classes=classes)
    if spec.task == "regression":
        summary["target_units"] = list(spec.target_units)
    write_json(Path(summary["run_dir"]) / "summary.json", summary)


def load(run_dir, model=None) -> "Run":
    """A finished run from its directory. ``model``: an empty module of your own class, for a run
    trained with one (its weights are loaded into it); a config's model is rebuilt from config.yaml."""
    path = Path(run_dir)
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{run_dir}: no readable summary.json; give the directory of a finished run") from None
    run = Run(path, summary, None, None)
    if model is None and summary.get("own_model"):
        raise UserError(f"{run_dir} was trained with your own module ({summary['model']}): pass "
                        f"hpc_dl.load(run_dir, model={summary['model']}(...)) with the same arguments")  # fmt: skip
    if model is not None:
        from hpc_dl.training.weights import read_state_dict

        state, weights = read_state_dict(path)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            why = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
            raise UserError(f"{weights} does not fit the {type(model).__name__} given: {why}") from None
        run._model = model.eval()
    return run


class Run:
    """A finished run: its directory, summary, metrics and trained model, and what the course
    commands do with it (predict, explain, export), in memory where a notebook wants it."""

    def __init__(self, run_dir: Path, summary: dict, model, splits):
        self.run_dir = Path(run_dir).absolute()  # still right after a notebook changes its directory
        self.summary, self._model, self._splits = summary, model, splits

    def __repr__(self) -> str:
        test = self.summary.get("test", {})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in test.items() if isinstance(v, float))
        return f"Run({str(self.run_dir)!r}: {self.summary.get('model')} on {self.summary.get('data')}, test {shown})"

    @property
    def config(self) -> configs.Config:
        return configs.load(self.run_dir / "config.yaml")

    @property
    def model(self):
        """The trained module (eval mode), loaded from the newest checkpoint when not in memory."""
        if self._model is None:
            from hpc_dl.training.weights import load_run

            _, self._splits, self._model, _ = load_run(self.run_dir)
        return self._model

    @property
    def history(self):
        """metrics.jsonl as a DataFrame: one row per record; ``split`` is train, val or test."""
        import pandas as pd

        from hpc_dl.telemetry.metrics import read

        rows = [
            {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
            for r in read(self.run_dir / "metrics.jsonl")
        ]
        return pd.DataFrame(rows)

    @property
    def files(self) -> list[str]:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.run_dir.iterdir())

    def samples(self, split: str = "test", n: int = 8):
        """The first ``n`` (input, label) pairs of a split, stacked: inputs as the model sees them."""
        import torch

        if split not in ("train", "val", "test"):
            raise UserError(f"split {split!r}: train, val or test")
        self._spec()
        dataset = getattr(self._splits, split)
        pairs = [dataset[i] for i in range(min(n, len(dataset)))]
        x, y = torch.stack([torch.as_tensor(x) for x, _ in pairs]), torch.as_tensor([y for _, y in pairs])
        if self._task() == "regression":  # the labels in the target's units, as predict answers
            shift, scale = self._spec().target_units
            y = y.double() * scale + shift
        return x, y

    def predict(self, inputs, top_k: int = 3):
        """Class probabilities (or values, for a regression) of ``inputs``: image or CSV file paths
        (as ``hpc-dl predict``: a DataFrame of the top classes with any warnings), or a tensor of
        inputs prepared like the training data (a DataFrame with one column per class)."""
        import pandas as pd
        import torch

        if isinstance(inputs, (str, os.PathLike)) or (isinstance(inputs, Sequence) and inputs
                                                      and isinstance(inputs[0], (str, os.PathLike))):  # fmt: skip
            from hpc_dl.course.predict import predict

            paths = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
            return pd.DataFrame(predict(self.run_dir, paths, top_k))
        model = self.model
        x = torch.as_tensor(inputs, dtype=torch.float32)
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                out = model(x.to(device)).float().cpu()
        except RuntimeError as e:  # e.g. "mat1 and mat2 shapes cannot be multiplied"
            why = str(e).splitlines()[0]
            raise UserError(f"predict: inputs of shape {tuple(x.shape)} do not fit the model: {why}") from None
        if self._task() == "regression":  # the model predicts the standardised target
            shift, scale = self.summary.get("target_units") or self._spec().target_units
            return pd.DataFrame({"prediction": out.squeeze(-1).numpy() * scale + shift})
        names = self._classes()
        if out.shape[-1] == 1:  # one logit: P(second class)
            p = torch.sigmoid(out.squeeze(-1))
            probs = torch.stack([1 - p, p], dim=-1)
        else:
            probs = out.softmax(-1)
        return pd.DataFrame(probs.numpy(), columns=names[: probs.shape[-1]])

    def explain(self, **options) -> list[Path]:
        """``hpc-dl explain`` on this run (options as its function's: samples, background, images, chosen)."""
        from hpc_dl.course.explain import explain

        self._course_check("explain")
        return explain(self.run_dir, **options)

    def export(self, onnx: bool = False) -> list[Path]:
        """``hpc-dl export``: a torch.export program (and ONNX) with the preprocessing inside."""
        from hpc_dl.course.export import export

        self._course_check("export")
        return export(self.run_dir, onnx=onnx)

    def show(self, *names: str):
        """The run's plots (loss.png, accuracy.png, ...) displayed in a notebook."""
        from IPython.display import Image, display

        for name in names or [p.name for p in sorted(self.run_dir.glob("*.png"))]:
            display(Image(filename=str(self.run_dir / name)))

    @property
    def spec(self):
        """What the data is: input shape, classes, feature names, task, preprocessing."""
        return self._spec()

    def _task(self) -> str:
        return self.summary.get("task") or self._spec().task  # a config's run: its data section knows

    def _classes(self) -> list[str]:
        if "classes" in self.summary:
            return self.summary["classes"]
        spec = self._spec()
        return spec.class_names or [str(i) for i in range(spec.num_classes)]

    def _spec(self):
        if self._splits is None and self.summary.get("own_data"):
            raise UserError(f"{self.run_dir} was trained on your own Dataset, which a loaded run does not have")
        if self._splits is None:
            from hpc_dl.training.weights import load_run

            _, self._splits, model, _ = load_run(self.run_dir)
            self._model = self._model or model
        return self._splits.spec

    def _course_check(self, what: str) -> None:
        if self.summary.get("own_model") or self.summary.get("own_data"):
            raise UserError(
                f"{what} rebuilds the model and data from {self.run_dir / 'config.yaml'}, which "
                "does not describe your own module or Dataset; use run.model and run.predict(tensor)"
            )


def _config(config, overrides) -> configs.Config:
    """The CLI's config.load for a path, a shipped name, or a nested dict, with overrides."""
    items = _override_items(overrides)
    if config is None or isinstance(config, (str, os.PathLike)):
        return configs.load(config, items)
    if not isinstance(config, Mapping):
        raise UserError(f"config: a YAML path, a shipped config's name or a dict, not {type(config).__name__}")
    return configs.load(None, [*_override_items(configs.flatten(config)), *items])


def _override_items(overrides) -> list[str]:
    """``{"a.b": 1}`` or ``["a.b=1"]`` as the CLI's ``a.b=1`` strings (values as YAML)."""
    import yaml

    if overrides is None:
        return []
    if isinstance(overrides, Mapping):  # nested sections are merged key by key, not replaced
        overrides = configs.flatten(overrides)
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in overrides.items()]  # fmt: skip
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)


def _torchrun(cfg: configs.Config, processes: int, run_dir, resume) -> Run:
    """The same run on ``processes`` local ranks through torchrun; its output is shown as it comes."""
    import yaml

    from hpc_dl.training.run import run_directory

    out = Path(run_dir) if run_dir else run_directory(cfg, None)
    tree = configs.to_dict(cfg)
    if tree["dist"]["strategy"] == "single":  # the config's one process becomes DDP's several
        tree["dist"]["strategy"] = "ddp"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(tree, f, sort_keys=False)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "hpc_dl",
        "train",
        f.name,
        "--run-dir",
        str(out),
    ] + (["--resume", resume] if resume else [])
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                print(line, end="", flush=True)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise UserError(f"the {processes}-process run failed (exit {proc.returncode}); its output is above")
    return load(out)
