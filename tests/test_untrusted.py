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


@pytest.fixture(scope="module")
def dcp_checkpoint(tmp_path_factory):
    """A real DCP checkpoint folder of a short one-process run."""
    from hpc_dl import config
    from hpc_dl.training.run import train

    out = tmp_path_factory.mktemp("dcp") / "run"
    sets = ["data.name=breast_cancer", "model.name=mlp", "train.steps=4", "checkpoint.format=dcp", "log.plots=false",
            "log.progress=off", "log.utilisation=false"]  # fmt: skip
    train(config.load(None, sets), run_dir=out)
    return out, sets, out / "checkpoints" / "step_00000004"


def _resign(folder: pathlib.Path) -> None:
    """An attacker rewrites the manifest too: the checksums do not stop a crafted folder."""
    from hpc_dl.checkpoint import dcp

    (folder / dcp.MANIFEST).unlink()
    dcp.write_manifest(folder)


def _dcp_tensors(folder, part: str) -> dict:
    from hpc_dl.checkpoint import dcp

    return {f"{part}.{k}": v for k, v in dcp.read_full(folder, part).items()}


def _refused(proc, marker) -> str:
    assert not marker.exists(), "a crafted DCP checkpoint ran code"
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_dcp_metadata_that_holds_code_is_refused(dcp_checkpoint, tmp_path):
    """DCP itself reads .metadata with plain pickle.load."""
    _, sets, folder = dcp_checkpoint
    crafted = tmp_path / "checkpoints" / "step_00000004"
    shutil.copytree(folder, crafted)
    marker = tmp_path / "pwned"
    (crafted / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
    _resign(crafted)
    line = _refused(run_cli("train", *sets, "--run-dir", tmp_path / "r", "--resume", crafted, check=False), marker)
    assert "not safe to load" in line and "pathlib" in line
    assert "not safe to load" in _refused(run_cli("consolidate", crafted, "--out", tmp_path / "m.pt", check=False),
                                          marker)  # fmt: skip
    assert not (tmp_path / "m.pt").exists()


def test_a_pickled_object_where_dcp_expects_a_tensor_is_refused(dcp_checkpoint, tmp_path):
    """DCP writes non-tensors as pickles and reads them back with torch.load(weights_only=False)."""
    import torch.distributed.checkpoint as dcp

    _, sets, folder = dcp_checkpoint
    crafted = tmp_path / "checkpoints" / "step_00000004"
    shutil.copytree(folder, crafted)
    marker = tmp_path / "pwned"
    whole = {k: v for part in ("model", "optimizer") for k, v in _dcp_tensors(folder, part).items()}
    whole["model.1.weight"] = Touch(marker)  # every other tensor as it was
    for f in crafted.glob("*.distcp"):
        f.unlink()
    dcp.save(whole, checkpoint_id=str(crafted), no_dist=True)
    _resign(crafted)
    line = _refused(run_cli("train", *sets, "--run-dir", tmp_path / "r", "--resume", crafted, check=False), marker)
    assert f"checkpoint {crafted} cannot be loaded: the DCP checkpoint holds a pickled object at" in line
    line = _refused(run_cli("consolidate", crafted, "--out", tmp_path / "m.pt", check=False), marker)
    assert "holds a pickled object at 'model.1.weight'" in line


def test_a_dcp_file_changed_after_saving_is_named(dcp_checkpoint, tmp_path):
    _, sets, folder = dcp_checkpoint
    crafted = tmp_path / "checkpoints" / "step_00000004"
    shutil.copytree(folder, crafted)
    data = next(crafted.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:-10] + bytes(10))
    line = _refused(run_cli("train", *sets, "--run-dir", tmp_path / "r", "--resume", crafted, check=False),
                    tmp_path / "none")  # fmt: skip
    assert f"checkpoint {data} is corrupt or truncated: its SHA-256 does not match MANIFEST.sha256" in line
