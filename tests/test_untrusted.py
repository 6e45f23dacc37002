"""Files from elsewhere never run code: an exported program, a DeepSpeed checkpoint, CIFAR batches.

Each test plants a pickle that creates a marker file when unpickled (standing for any code
an attacker would run) and checks that the marker never appears.
"""

import io
import json
import pathlib
import pickle
import shutil
import zipfile

import pytest
import torch

from hpc_dl.course import export
from tests.conftest import run_cli
from tests.course.conftest import bc_run  # noqa: F401  the trained breast-cancer run (a session fixture)
from tests.data.test_files import write_cifar10


class Touch:
    """Unpickling this creates ``path``."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _hostile_pt2(program: pathlib.Path, marker: pathlib.Path) -> None:
    """Rewrite a real torch.export archive so that its first weight is 'pickled': torch.export.load
    unpickles such weights with weights_only=False."""
    with zipfile.ZipFile(program) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    config_name = next(n for n in entries if n.endswith("/data/weights/model_weights_config.json"))
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    entries[config_name] = json.dumps(config).encode()
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    entries[config_name.rsplit("/", 1)[0] + "/" + first["path_name"]] = buffer.getvalue()
    with zipfile.ZipFile(program, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


@pytest.mark.slow
def test_predict_never_loads_the_exported_program(bc_run, tmp_path):  # noqa: F811
    run = tmp_path / "bc"
    shutil.copytree(bc_run, run)
    export.export(run, onnx=False)  # predictor.json up to date: nothing makes predict re-export
    marker = tmp_path / "pwned"
    _hostile_pt2(run / "export" / "model.pt2", marker)
    names = json.loads((run / "export" / "predictor.json").read_text())["inputs"]["numeric"]
    rows = torch.rand(3, len(names)) * 10
    csv = tmp_path / "rows.csv"
    csv.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r.tolist())) + "\n" for r in rows))

    proc = run_cli("predict", run, csv, "--json", "--top-k", "2", check=False)
    assert not marker.exists(), "predict unpickled the planted model.pt2"
    assert proc.returncode == 0, proc.stderr
    predictor, meta, _ = export.build(run)
    with torch.no_grad():
        expected = predictor(rows)
    for line, p in zip(proc.stdout.splitlines(), expected, strict=True):
        top = json.loads(line)["top"]
        assert [c for c, _ in top] == [meta["classes"][i] for i in p.topk(2).indices]
        assert [v for _, v in top] == pytest.approx(p.topk(2).values.tolist(), abs=1e-5)


def test_consolidate_opens_only_the_folder_it_checked(tmp_path):
    """DeepSpeed globs the path it is given: ``a[b]`` would match ``ab/``, a folder nobody checked."""
    marker = tmp_path / "pwned"
    (tmp_path / "ds" / "ab").mkdir(parents=True)
    torch.save(Touch(marker), tmp_path / "ds" / "ab" / "mp_rank_00_model_states.pt")
    named = tmp_path / "ds" / "a[b]"
    named.mkdir()
    torch.save({"weight": torch.zeros(2)}, named / "mp_rank_00_model_states.pt")  # harmless, but no checkpoint

    proc = run_cli("consolidate", named, check=False)
    assert not marker.exists(), "consolidate unpickled a file in ds/ab/"
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(named) in lines[0] and str(tmp_path / "ds" / "ab") not in lines[0]
    assert not (tmp_path / "model_fp32.pt").exists()


def test_a_cifar_batch_that_holds_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path / "data", per_batch=10)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"batch_label": "training batch 1 of 5", "labels": [0] * 10, "data": Touch(marker)}, f)

    proc = run_cli("train", "data.name=cifar10", f"data.root={tmp_path / 'data'}", "train.steps=1",
                   "--run-dir", tmp_path / "run", check=False)  # fmt: skip
    assert not marker.exists(), "training unpickled the planted data_batch_1"
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: {folder / 'data_batch_1'} holds 'pathlib.Path.touch', which the CIFAR format never contains; "
        "refusing to unpickle it"
    )


@pytest.mark.parametrize("where", ["file", "override"])
def test_a_config_cannot_construct_python_objects(tmp_path, where):
    """YAML's python tags (what yaml.unsafe_load would act on) are refused, in a file and in an override."""
    marker = tmp_path / "MARKER"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    if where == "file":
        (tmp_path / "evil.yaml").write_text(f"train:\n  seed: {tag}\n")
        proc = run_cli("config", tmp_path / "evil.yaml", cwd=tmp_path, check=False)
    else:
        proc = run_cli("config", f"train.seed={tag}", cwd=tmp_path, check=False)
    assert not marker.exists(), "the config ran a command"
    expected = "could not determine a constructor for the tag" if where == "file" else "train.seed"
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
