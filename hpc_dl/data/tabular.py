"""Tabular data sets: features scaled with statistics of the training split only."""

import csv
import math
from pathlib import Path

import numpy as np

from hpc_dl.data import bundled
from hpc_dl.data.spec import DataSpec, Splits, shuffle_split, split_indices, standardise_target, tensor_splits
from hpc_dl.errors import UserError


def fit_scaler(x_train: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) so that (x - shift) / scale is standardised or in [0, 1]."""
    if kind == "standard":
        shift, scale = x_train.mean(axis=0), x_train.std(axis=0)
    else:
        shift, scale = x_train.min(axis=0), x_train.max(axis=0) - x_train.min(axis=0)
    return shift, np.where(scale > 0, scale, 1.0)  # a constant column stays constant


def breast_cancer(cfg) -> Splits:
    x, y, class_names, feature_names = bundled.breast_cancer()
    parts = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    shift, scale = fit_scaler(x[parts[0]], cfg.scaling)
    spec = DataSpec(
        input_shape=(x.shape[1],),
        num_classes=2,
        class_names=class_names,
        feature_names=feature_names,
        preprocessing={"scaling": cfg.scaling, "shift": shift.tolist(), "scale": scale.tolist()},
    )
    return tensor_splits((x - shift) / scale, y, parts, spec)


MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}


def number(cell: str) -> float:
    """A numeric cell as a float; ValueError saying why not. inf and overflowing values like 1e999
    are refused: one of them turns the scaler's statistics, and so every prediction, into nan."""
    try:
        value = float(cell)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def read_csv(path: Path, field: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells), ...]) of a CSV file with a header row; blank lines are skipped.
    ``field``: the config field that named the file, for the message."""
    where = f"{field} = '{path}'" if field else str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(f)
            rows = list(reader)
    except OSError as e:
        raise UserError(f"{where}: cannot read the CSV file ({e.strerror})") from None
    except UnicodeDecodeError:  # e.g. an image or a spreadsheet given by mistake
        raise UserError(f"{where}: not a CSV file (not UTF-8 text)") from None
    except csv.Error as e:  # a NUL byte, or a field larger than csv's limit
        raise UserError(f"{where} line {reader.line_num}: not a CSV file ({e})") from None
    if not rows:
        raise UserError(f"{path}: the file is empty; expected a header row and data rows")
    data = [(line, row) for line, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    if not data:
        raise UserError(f"{path}: no data rows after the header")
    return [h.strip() for h in rows[0]], data


def csv_table(cfg) -> Splits:
    """A CSV file with a header: ``target`` names the label column (a number with ``task:
    regression``), ``categorical`` columns are one-hot encoded (categories seen in the training
    split), all other columns must be numbers. Every bad row is reported with its line number before
    anything trains."""
    path = Path(cfg.path)
    header, rows = read_csv(path, "data.path")
    for col in [cfg.target, *cfg.categorical]:
        if col not in header:
            field = "data.target" if col == cfg.target else "data.categorical"
            raise UserError(f"{field}: no column '{col}' in {path}; its columns are {', '.join(header)}")
    numeric = [c for c in header if c != cfg.target and c not in cfg.categorical]
    records = _records(path, header, rows, numeric, cfg)
    y, parts, classes, target = _targets(records, path, cfg)
    x_num = np.array([r[0] for r in records], dtype=np.float64).reshape(len(records), len(numeric))
    shift, scale = fit_scaler(x_num[parts[0]], cfg.scaling)
    blocks, names = [(x_num - shift) / scale], list(numeric)
    for j, col in enumerate(cfg.categorical):
        seen = sorted({records[i][1][j] for i in parts[0]})  # categories of the training split only
        cells = np.array([r[1][j] for r in records])
        blocks.append((cells[:, None] == np.array(seen)[None, :]).astype(np.float64))
        names += [f"{col}={v}" for v in seen]
    spec = DataSpec(
        input_shape=(len(names),),
        num_classes=len(classes) or 1,
        class_names=classes,
        feature_names=names,
        preprocessing={"scaling": cfg.scaling, "numeric": numeric, "shift": shift.tolist(), "scale": scale.tolist(),
                       "categories": [n for n in names if n not in numeric], **target},
        task="regression" if target else "",
    )  # fmt: skip
    return tensor_splits(np.concatenate(blocks, axis=1), y, parts, spec)


def _records(path: Path, header: list[str], rows, numeric: list[str], cfg) -> list[tuple[list, list, str]]:
    """(numeric values, categorical cells, target cell) of every row; every bad row is reported, by
    line and column, in one UserError."""
    where = {c: header.index(c) for c in header}
    regression = cfg.task == "regression"
    problems, records = [], []
    for line, row in rows:
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        values = []
        for c in numeric:
            cell = row[where[c]].strip()
            if cell.lower() in MISSING:
                problems.append(f"line {line}: column '{c}' is missing")
                continue
            try:
                values.append(number(cell))
            except ValueError as e:
                problems.append(f"line {line}: column '{c}' = '{cell}' {e}")
        label = row[where[cfg.target]].strip()
        if label.lower() in MISSING:
            problems.append(f"line {line}: the {'target' if regression else 'label'} column '{cfg.target}' is missing")
        elif regression:
            try:
                number(label)
            except ValueError as e:
                problems.append(f"line {line}: column '{cfg.target}' = '{label}' {e} (data.task = regression)")
        records.append((values, [row[where[c]].strip() for c in cfg.categorical], label))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UserError(f"{path}: {len(problems)} bad row(s): {shown}")
    return records


def _targets(records, path: Path, cfg) -> tuple[np.ndarray, tuple, list[str], dict]:
    """(targets, split indices, class names, the target's preprocessing): class indices and a
    stratified split; for regression the numbers standardised on the training split of a seeded
    shuffle split (a continuous target cannot be stratified), and no classes."""
    if cfg.task == "regression":
        values = np.array([float(r[2]) for r in records])
        try:
            parts = shuffle_split(len(values), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        except ValueError:
            raise UserError(
                f"{path}: too few rows for the train/val/test split (data.val_fraction = {cfg.val_fraction}, "
                f"data.test_fraction = {cfg.test_fraction}): {len(values)} data rows; each split needs rows "
                "(the training split at least 2)"
            ) from None
        y, target = standardise_target(values, parts[0])
        return y, parts, [], {"target": cfg.target, **target}
    classes = sorted({r[2] for r in records})
    if len(classes) < 2:
        raise UserError(f"data.target = '{cfg.target}': {path} has a single class ({classes[0]!r}); need at least two")
    y = np.array([classes.index(r[2]) for r in records])
    return y, _split(y, classes, path, cfg), classes, {}


def _split(y: np.ndarray, classes: list[str], path: Path, cfg):
    """The stratified split, or what about the file makes it impossible: scikit-learn's own
    error speaks of groups and members, not of rows and labels."""
    try:
        return split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    except ValueError:
        pass
    counts = np.bincount(y)
    numeric = all(_is_number(c) for c in classes)
    singles = int((counts == 1).sum())
    if numeric and len(classes) > 10 and singles > len(classes) / 2:  # a measurement, not a label: regression
        raise UserError(
            f"data.target = '{cfg.target}': {path} has {len(classes)} distinct values in that column over "
            f"{len(y)} rows, {singles} of them in a single row: too many for classification (each distinct value "
            "is a class, and each class needs rows in the train, val and test splits). To predict the number, "
            "set data.task=regression; to classify, bin the values into a few classes in a new column and name it "
            "here"
        )
    rarest = int(counts.argmin())
    raise UserError(
        f"{path}: too few rows for the train/val/test split (data.val_fraction = {cfg.val_fraction}, "
        f"data.test_fraction = {cfg.test_fraction}): {len(y)} data rows, {len(classes)} classes, the rarest "
        f"('{classes[rarest]}') in {counts[rarest]} row(s); every class needs rows in each split"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
