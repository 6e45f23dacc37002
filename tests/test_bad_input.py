"""Bad input gives one line `error: ...` naming the file, line, column or field, and exit code 2:
no traceback, and nothing already on disk is lost."""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_breast_cancer

from tests.conftest import CONFIGS, run_cli

QUIET = ["log.wandb=false", "log.plots=false", "log.utilisation=false", "log.progress=off"]


def fails(*args, cwd=None) -> str:
    """Run hpc-dl, expect exit 2 with exactly one `error:` line on stderr; return that line."""
    proc = run_cli(*args, cwd=cwd, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------ config files
@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_binary_config_file(tmp_path, content):
    path = tmp_path / "some.bin"
    path.write_bytes(content)
    line = fails("train", path)
    assert str(path) in line and "not a text file" in line


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  # and another\n"])
def test_empty_config_file_is_not_the_embedded_default(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    line = fails("config", path)
    assert str(path) in line and "empty" in line


def test_duplicate_key_names_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr: 0.1\n  name: sgd\n  lr: 0.2\ntrain:\n  steps: 2\n")
    line = fails("config", path)
    assert str(path) in line and "duplicate key 'lr'" in line and "line 4" in line and "line 2" in line


def test_duplicate_section_and_booleans_stay_yaml12(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("log:\n  progress: off\ntrain:\n  steps: 2\nlog:\n  plots: false\n")
    line = fails("config", path)
    assert "duplicate key 'log'" in line and "line 5" in line and "line 1" in line
    path.write_text("log:\n  progress: off\n  plots: false\n")  # without the duplicate: 'off' is a string
    assert "must be one of auto, bar, plain, off" not in run_cli("config", path).stderr


# ------------------------------------------------------------------------ data
def test_synthetic_data_larger_than_memory(tmp_path):
    line = fails("train", "data.name=synthetic_images", "data.samples=1000000000000", "train.steps=2", *QUIET,
                 "--run-dir", tmp_path / "run")  # fmt: skip
    assert "synthetic_images" in line and "data.samples" in line and "memory" in line and "TiB" in line
    assert not (tmp_path / "run").exists()


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def test_csv_with_too_few_rows_for_the_split(tmp_path):
    path = write_csv(tmp_path / "two.csv", ["a", "b", "label"], [[1, 2, 0], [3, 4, 1]])
    line = fails("train", "data.name=csv", f"data.path={path}", "model.name=mlp", "train.steps=2", *QUIET)
    assert str(path) in line and "too few rows" in line and "2 data rows" in line


def test_csv_with_a_numeric_target_of_many_values(tmp_path):
    rows = [[i, i % 7, 1.5 * i + 0.25] for i in range(60)]
    path = write_csv(tmp_path / "prices.csv", ["a", "b", "price"], rows)
    line = fails("train", "data.name=csv", f"data.path={path}", "data.target=price", "model.name=mlp",
                 "train.steps=2", *QUIET)  # fmt: skip
    assert "data.target = 'price'" in line and "60 distinct values" in line and "classification" in line


def test_csv_rejects_non_finite_numbers(tmp_path):
    rows = [[1, 2, 0], [2, "inf", 1], ["-inf", 3, 0], [4, "1e999", 1], [5, "Infinity", 0], [6, 7, 1]] * 5
    path = write_csv(tmp_path / "inf.csv", ["a", "b", "label"], rows)
    line = fails("train", "data.name=csv", f"data.path={path}", "model.name=mlp", "train.steps=2", *QUIET)
    assert str(path) in line
    assert "line 3: column 'b' = 'inf' is not a finite number" in line
    assert "line 4: column 'a' = '-inf'" in line and "line 5: column 'b' = '1e999'" in line


def write_image_tree(root, bad=b""):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    (root / "train" / "dog" / "bad.png").write_bytes(bad)
    return root / "train" / "dog" / "bad.png"


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_in_an_imagefolder_tree(tmp_path, workers):
    bad = write_image_tree(tmp_path / "tree", np.random.default_rng(1).bytes(300))
    line = fails("train", "data.name=imagefolder", f"data.root={tmp_path / 'tree'}", "data.image_size=8",
                 "data.batch_size=9", f"data.num_workers={workers}", "train.steps=2", *QUIET,
                 "--run-dir", tmp_path / "run")  # fmt: skip
    assert str(bad) in line and "not a readable image" in line


@pytest.mark.parametrize("size", [0, 2])
def test_empty_token_file(tmp_path, size):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"\x01\x00" * size)
    line = fails("train", "data.name=tokens", f"data.path={path}", "model.name=gpt", "train.steps=2", *QUIET)
    if size == 0:
        assert f"data.path = '{path}'" in line and "empty" in line
    else:  # two tokens: too short for any split
        assert "data.block_size = 128" in line


# --------------------------------------------------------------- run directory
@pytest.mark.parametrize("where", ["--run-dir", "--run-dir below", "log.dir below"])
def test_run_directory_that_cannot_be_made(tmp_path, where):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    target = taken / "sub" if "below" in where else taken
    if where.startswith("--"):
        args, named = ["--run-dir", target], f"--run-dir {target}"
    else:
        args, named = [f"log.dir={target}"], f"log.dir = '{target}'"
    line = fails("train", "train.steps=2", *QUIET, *args)
    assert named in line and f"{taken} is a file" in line
    assert taken.read_text() == "keep me\n"


# --------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad_input") / "bc"
    run_cli(
        "train", CONFIGS / "breast_cancer_mlp.yaml", "train.steps=2", "optim.warmup_steps=0", *QUIET, "--run-dir", run
    )
    return run


def test_predict_image_for_a_table_model(table_run, tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(image)
    line = fails("predict", table_run, image)
    assert str(image) in line and "CSV" in line


def test_predict_folder(table_run, tmp_path):
    line = fails("predict", table_run, tmp_path)
    assert str(tmp_path) in line and "folder" in line and "no such file" not in line


@pytest.mark.parametrize("cell", ["inf", "nan", "-1e999"])
def test_predict_rejects_non_finite_numbers(table_run, tmp_path, cell):
    names = list(load_breast_cancer().feature_names)
    rows = [[1.0] * len(names), [1.0] * 5 + [cell] + [1.0] * (len(names) - 6)]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([",".join(names), *(",".join(map(str, r)) for r in rows)]) + "\n")
    line = fails("predict", table_run, path)
    assert f"{path} line 3: column '{names[5]}'" in line and ("missing" if cell == "nan" else "finite") in line
