"""DeepSpeed ZeRO 1-3 with fp32 and bf16 on 2 CPU ranks (gloo), with save and exact resume."""

import json

import pytest
import torch

from hpc_dl import config, models
from hpc_dl.data import build as build_data
from tests.conftest import CONFIGS, run_cli
from tests.distributed.launch import torchrun

pytestmark = pytest.mark.slow

RUN = [CONFIGS / "breast_cancer_mlp.yaml", "dist.strategy=deepspeed", "optim.name=adamw", "optim.nesterov=false",
       "optim.lr=3e-3", "train.steps=12", "train.eval_every=0", "log.every=4", "checkpoint.every=6",
       "log.plots=false", "dist.preflight=false"]  # fmt: skip


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


# every stage and both precisions, stage 3 (partitioned parameters) in both: 4 of the 6 pairs, for CI time
@pytest.mark.parametrize(("stage", "precision"), [(1, "fp32"), (2, "bf16"), (3, "fp32"), (3, "bf16")])
def test_zero_trains_agrees_across_ranks_and_resumes_exactly(tmp_path, stage, precision):
    over = [f"dist.zero_stage={stage}", f"train.precision={precision}"]
    torchrun("train", *RUN, *over, "--run-dir", tmp_path / "a")
    a = _summary(tmp_path / "a")
    assert a["strategy"] == "deepspeed" and a["precision"] == ("bfloat16" if precision == "bf16" else "fp32")
    assert a["parameter_fingerprints"][0] == a["parameter_fingerprints"][1]
    half = tmp_path / "a" / "checkpoints" / "step_00000006"
    assert half.is_dir() and (half / "ds_config.json").is_file()
    assert json.loads((half / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage
    torchrun("train", *RUN, *over, "--run-dir", tmp_path / "b", "--resume", half)
    assert _summary(tmp_path / "b")["parameter_fingerprints"] == a["parameter_fingerprints"]
    assert _summary(tmp_path / "b")["test"] == a["test"]


def test_consolidated_fp32_state_dict_loads_into_the_plain_model(tmp_path):
    torchrun("train", *RUN, "dist.zero_stage=3", "--run-dir", tmp_path / "z3")
    run_cli("consolidate", tmp_path / "z3")
    state = torch.load(tmp_path / "z3" / "model_fp32.pt", weights_only=True)
    cfg = config.load(CONFIGS / "breast_cancer_mlp.yaml")
    model = models.build(cfg.model, build_data(cfg.data).spec)
    model.load_state_dict(state)  # strict: every parameter present with its full shape
    assert all(v.dtype == torch.float32 for v in state.values())
    from hpc_dl.distributed.strategy import Strategy

    s = Strategy(cfg.dist, torch.device("cpu"))
    s.module = model
    assert s.parameter_fingerprint() == _summary(tmp_path / "z3")["parameter_fingerprints"][0]

    # ZeRO partitions reload only on the world size that wrote them: refused before DeepSpeed reads them
    half = tmp_path / "z3" / "checkpoints" / "step_00000006"
    proc = run_cli("train", *RUN, "dist.zero_stage=3", "--run-dir", tmp_path / "one", "--resume", half, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"checkpoint {half} was written by DeepSpeed on 2 rank(s): each holds its own ZeRO partition of the "
            "optimizer state, which DeepSpeed reloads only on 2 rank(s), not 1") in proc.stderr  # fmt: skip


def test_user_json_is_merged_over_the_generated_config(tmp_path):
    from hpc_dl.distributed.zero import deepspeed_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}, "gradient_clipping": 0.5}))
    cfg = config.load(CONFIGS / "breast_cancer_mlp.yaml", ["dist.strategy=deepspeed", f"dist.deepspeed_config={user}"])
    merged = deepspeed_config(cfg, world_size=4, dtype=None)
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert merged["gradient_clipping"] == 0.5 and merged["train_batch_size"] == 32 * 4
    assert "optimizer" not in merged  # SGD is passed to DeepSpeed as a client optimizer
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cfg.dist.deepspeed_config = str(bad)
    from hpc_dl.errors import ConfigError

    with pytest.raises(ConfigError, match="dist.deepspeed_config = .*bad.json.: cannot read it as JSON"):
        deepspeed_config(cfg, world_size=1, dtype=None)


def test_fp16_on_the_cpu_is_a_clear_error(tmp_path):
    proc = run_cli("train", *RUN, "train.precision=fp16", "--run-dir", tmp_path / "f", check=False)
    assert proc.returncode == 2 and "train.precision = 'fp16' needs a CUDA device" in proc.stderr
