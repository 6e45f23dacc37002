"""`hpc-dl export` and `hpc-dl predict`: the exported program agrees with the model in the process."""

import csv
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from hpc_dl.course import export
from hpc_dl.training.weights import load_run
from tests.conftest import run_cli
from tests.course.conftest import raw_test_split

pytestmark = pytest.mark.slow


def _in_process(run) -> torch.Tensor:
    """Class probabilities of the trained model on the run's own (preprocessed) test split."""
    cfg, splits, model, _ = load_run(run)
    x = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    with torch.no_grad():
        logits = model(x)
    if splits.spec.task == "binary":
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(-1)


@pytest.mark.parametrize("run_name", ["bc_run", "digits_run"])
def test_exported_program_and_onnx_agree_with_the_model_on_the_test_set(run_name, request):
    run = request.getfixturevalue(run_name)
    files = export.export(run)
    assert [f.name for f in files] == ["model.pt2", "model.onnx", "predictor.json"]
    raw, labels = raw_test_split(run)
    expected = _in_process(run)

    program = torch.export.load(run / "export" / "model.pt2").module()
    with torch.no_grad():
        got = program(torch.from_numpy(raw))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got.argmax(1).numpy() == labels).mean() > 0.9  # and it is the trained model, not a fresh one

    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    (onnx_probs,) = session.run(None, {"x": raw})
    np.testing.assert_allclose(onnx_probs, expected.numpy(), atol=1e-5, rtol=1e-4)

    meta = json.loads((run / "export" / "predictor.json").read_text())
    assert meta["classes"] == (["malignant", "benign"] if run_name == "bc_run" else [str(i) for i in range(10)])


def test_predict_on_csv_rows_prints_the_programs_top_k(bc_run, tmp_path):
    raw, labels = raw_test_split(bc_run)
    names = json.loads((bc_run / "export" / "predictor.json").read_text())["inputs"]["numeric"]
    path = tmp_path / "patients.csv"
    with open(path, "w", newline="") as f:  # columns in another order, plus the label: both fine
        w = csv.writer(f)
        w.writerow(["label", *reversed(names)])
        w.writerows([[y, *reversed([repr(float(v)) for v in row])] for row, y in zip(raw, labels)])
    out = run_cli("predict", bc_run, path, "--json", "--top-k", "2").stdout.splitlines()
    rows = [json.loads(line) for line in out]
    expected = _in_process(bc_run)
    assert [r["input"] for r in rows] == [f"patients.csv:{i}" for i in range(2, len(raw) + 2)]
    classes = ["malignant", "benign"]
    for r, p in zip(rows, expected):
        assert r["top"][0][0] == classes[int(p.argmax())]
        assert r["top"][0][1] == pytest.approx(float(p.max()), abs=1e-5)
        assert r["top"][0][1] + r["top"][1][1] == pytest.approx(1, abs=1e-5)
    plain = run_cli("predict", bc_run, path, "--top-k", "1").stdout.splitlines()[0]
    assert plain.startswith("patients.csv:2: ") and plain.split()[1] in classes


def test_predict_on_image_files(digits_run, tmp_path):
    raw, labels = raw_test_split(digits_run)
    pixels = np.rint(raw[:20] * 255).astype(np.uint8)  # PNG holds 8 bits
    paths = []
    for i, img in enumerate(pixels):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(img[0]).save(paths[-1])
    predictor, _, _ = export.build(digits_run)
    with torch.no_grad():
        expected = predictor(torch.from_numpy(pixels).float() / 255)
    rows = [json.loads(line) for line in run_cli("predict", digits_run, *paths, "--json").stdout.splitlines()]
    assert [r["input"] for r in rows] == [p.name for p in paths]
    for r, p in zip(rows, expected):
        top = p.topk(3)
        assert [c for c, _ in r["top"]] == [str(int(i)) for i in top.indices]
        assert [v for _, v in r["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_predict_reexports_when_the_run_has_newer_weights(bc_run, tmp_path):
    meta_path = bc_run / "export" / "predictor.json"
    run_cli("predict", bc_run, _one_row_csv(bc_run, tmp_path))
    meta = json.loads(meta_path.read_text())
    meta["weights"] = "an older checkpoint"
    meta_path.write_text(json.dumps(meta))
    run_cli("predict", bc_run, _one_row_csv(bc_run, tmp_path))
    assert json.loads(meta_path.read_text())["weights"].endswith(".pt")


def _one_row_csv(run, tmp_path):
    raw, _ = raw_test_split(run)
    names = json.loads((run / "export" / "predictor.json").read_text())["inputs"]["numeric"]
    path = tmp_path / "one.csv"
    path.write_text(",".join(names) + "\n" + ",".join(map(str, raw[0])) + "\n")
    return path


def test_bad_input_names_the_row_or_file(bc_run, digits_run, tmp_path):
    good = _one_row_csv(bc_run, tmp_path)
    header, row = good.read_text().splitlines()
    cases = {
        "missing.csv": (header.replace("mean radius,", "") + "\n" + row.split(",", 1)[1] + "\n",
                        "the model needs column(s) 'mean radius', not in the header"),
        "word.csv": (f"{header}\n{row}\n{row.replace(row.split(',')[3], 'big', 1)}\n",
                     "word.csv line 3: column 'mean area' = 'big' is not a number"),
        "short.csv": (f"{header}\n{row}\n1,2,3\n", "short.csv line 3: 3 fields, the header has 30"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        proc = run_cli("predict", bc_run, tmp_path / name, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = run_cli("predict", digits_run, broken, check=False)
    assert proc.returncode == 2 and f"{broken}: not a readable image" in proc.stderr
    proc = run_cli("predict", digits_run, good, check=False)
    assert proc.returncode == 2 and f"{good}: this model takes image files" in proc.stderr
    proc = run_cli("predict", tmp_path, good, check=False)
    assert proc.returncode == 2 and "not a run directory (no config.yaml)" in proc.stderr
