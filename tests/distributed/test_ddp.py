"""DDP under real torchrun and under plain Slurm-style variables, on the CPU with gloo."""

import json

import pytest
import torch

from hpc_dl import checkpoint
from tests.conftest import CONFIGS, run_cli
from tests.distributed.launch import srun_like, torchrun

pytestmark = pytest.mark.slow

# No dropout or BatchNorm: then 2 ranks x 8 x 2 micro-batches compute exactly what 1 process x 32 does.
RUN = [CONFIGS / "breast_cancer_mlp.yaml", "model.dropout=0", "train.steps=40", "train.eval_every=0", "log.every=5",
       "checkpoint.every=20", "log.plots=false"]  # fmt: skip


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun(
        "train", *RUN, "dist.strategy=ddp", "data.batch_size=8", "train.grad_accum=2", "log.profile_steps=2",
        "log.profile_warmup=3", "--run-dir", out, env={"WANDB_MODE": "offline"},
    )  # fmt: skip
    return out, proc


def test_ddp_replicas_agree_and_match_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    out, proc = ddp_run
    summary = _summary(out)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 32 and summary["strategy"] == "ddp"
    a, b = summary["parameter_fingerprints"]
    assert a == b  # identical parameters on both ranks, bit for bit
    assert "preflight: all ranks checked in, all-reduce correct" in proc.stdout
    assert proc.stdout.count("done: test accuracy") == 1  # only rank 0 reports
    test = summary["test"]  # the confusion matrix is the whole test split's, not one rank's share
    assert sum(map(sum, test["confusion"])) == test["samples"] == 114
    assert (test["confusion"][0][0] + test["confusion"][1][1]) / 114 == pytest.approx(test["accuracy"])

    # One process with the same global batch and the same micro-step structure (16 x 2 accumulated):
    # 21 micro-batches per epoch, so a step can straddle two epochs, in both runs alike.
    run_cli("train", *RUN, "data.batch_size=16", "train.grad_accum=2", "--run-dir", tmp_path / "single")
    single, ddp = _losses(tmp_path / "single"), _losses(out)
    assert len(single) == len(ddp) == 8
    # Same samples in every step; only the order of floating-point sums differs (2 half-batch
    # gradients averaged by the all-reduce): 1e-4 relative over 40 SGD steps.
    assert ddp == pytest.approx(single, rel=1e-4)


def test_ddp_resume_with_the_same_world_size_is_exact(ddp_run, tmp_path):
    out, _ = ddp_run
    half = out / "checkpoints" / "step_00000020.pt"
    assert len(checkpoint.load(half)["rng"]) == 2  # each rank's RNG state
    torchrun("train", *RUN, "dist.strategy=ddp", "data.batch_size=8", "train.grad_accum=2",
             "--run-dir", tmp_path / "resumed", "--resume", half)  # fmt: skip
    assert _summary(tmp_path / "resumed")["parameter_fingerprints"] == _summary(out)["parameter_fingerprints"]
    final = [checkpoint.load(d / "checkpoints" / "step_00000040.pt")["model"] for d in (out, tmp_path / "resumed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def test_a_ddp_checkpoint_of_2_ranks_resumes_in_one_process(ddp_run, tmp_path):
    """The global batch (2 x 8 x 2 = 32) is kept: one process accumulates 2 micro-batches of 16. The
    same samples make each step, so losses and weights follow the uninterrupted run."""
    out, _ = ddp_run
    proc = run_cli("train", *RUN, "data.batch_size=16", "--run-dir", tmp_path / "one",
                   "--resume", out / "checkpoints" / "step_00000020.pt")  # fmt: skip
    assert "train.grad_accum 1 -> 2, so a step is still 1 x 16 x 2 = 32 samples" in proc.stderr
    assert _losses(tmp_path / "one") == pytest.approx(_losses(out)[4:], rel=1e-4)
    final = [checkpoint.load(d / "checkpoints" / "step_00000040.pt")["model"] for d in (out, tmp_path / "one")]
    assert all(torch.allclose(final[0][k], final[1][k], atol=1e-5, rtol=0) for k in final[0])


def test_plain_srun_variables_form_the_same_world_as_torchrun(ddp_run, tmp_path):
    out, _ = ddp_run
    procs = srun_like("train", *RUN, "dist.strategy=ddp", "data.batch_size=8", "train.grad_accum=2",
                      "--run-dir", tmp_path / "srun")  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    summary = _summary(tmp_path / "srun")
    assert summary["world_size"] == 2
    assert summary["parameter_fingerprints"] == _summary(out)["parameter_fingerprints"]


def test_preflight_passes_on_two_ranks():
    proc = torchrun("preflight", "--megabytes", "4")
    assert "all ranks checked in, all-reduce correct" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1"] and all(r[7] == "True" for r in rows)
    assert all(float(r[8]) > 0 for r in rows)  # bus bandwidth in GB/s


def test_step_time_breakdown_and_every_ranks_host_metrics(ddp_run):
    out, proc = ddp_run
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    for r in train:
        parts = r["data_s"] + r["compute_s"] + r["optimizer_s"] + r["other_s"]
        assert parts == pytest.approx(r["step_s"], rel=1e-9)  # the phases tile the step exactly
        assert r["compute_s"] > 0 and r["comm_s"] > 0  # the all-reduce, timed by the DDP comm hook
        assert [x["rank"] for x in r["ranks"]] == [0, 1]
        assert all(x["rss_gib"] > 0 and x["cpu_percent"] >= 0 for x in r["ranks"])
        assert r["cpu_percent_min"] <= r["cpu_percent_max"]
    assert proc.stderr.count("GPU utilisation: not available") == 1  # once, from rank 0


def test_one_wandb_run_per_job_with_every_ranks_metrics(ddp_run):
    from tests.telemetry.test_wandb import inspect

    out, _ = ddp_run
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1  # rank 0 only
    logged = [r["history"]["item"] for r in inspect(out, summary=False) if r["type"] == "history"]
    train = [h for h in logged if "train/loss" in h]
    assert len(train) == 8 and all(h["system/rss_gib_min"] > 0 for h in train)  # every rank's, as min/median/max
    (table,) = next((out / "wandb").glob("offline-run-*")).rglob("ranks_*.table.json")  # logged at the end
    assert [row[:1] for row in json.loads(table.read_text())["data"]] == [[0], [1]]  # one row per rank


def test_profiler_writes_one_trace_per_rank(ddp_run):
    out, _ = ddp_run
    for rank in (0, 1):
        (trace,) = (out / "profile").glob(f"rank{rank}.*.pt.trace.json")
        events = json.loads(trace.read_text())["traceEvents"]
        names = {e.get("name") for e in events}
        # steps 4 and 5 after 3 warm-up steps; the profiler counts from 0
        assert {"ProfilerStep#3", "ProfilerStep#4"} <= names and "ProfilerStep#2" not in names
        assert any(n and n.startswith("aten::addmm") for n in names)  # the MLP's matmuls
        assert "Self CPU" in (out / "profile" / f"rank{rank}_ops.txt").read_text()
