"""slurm/train.sbatch and pre-emption on a real two-node Slurm cluster (tests/slurm/cluster.py: tasks
bound to cores by task/affinity, with task/cgroup where a writable cgroup v1 hierarchy exists and
without where not, e.g. cgroup v2 without systemd; GPUs as GRES without CUDA)."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpc_dl.telemetry import events
from tests.conftest import CONFIGS, ROOT
from tests.slurm.jobs import job_field, sbatch, wait_for, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TEMPLATE = ROOT / "slurm" / "train.sbatch"
# The test nodes have 2 CPUs and no GPUs: these override the template's H100 defaults.
SMALL = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]
MLP = [CONFIGS / "breast_cancer_mlp.yaml", "log.plots=false", "train.eval_every=0", "dist.strategy=ddp"]


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_two_node_ddp_through_the_template(slurm, tmp_path):
    job = sbatch("--nodes=2", *SMALL, TEMPLATE, *MLP, "train.steps=60", "log.every=20", f"log.dir={tmp_path}/runs",
                 cwd=tmp_path, env={"PROJECT": str(ROOT)})  # fmt: skip
    log = tmp_path / f"slurm-hpc_dl-{job}.out"
    assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, log=log) == "COMPLETED", log.read_text()
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 60 and summary["strategy"] == "ddp"
    hosts = {r["host"] for r in _records(run_dir)[-3]["ranks"]}
    assert hosts == {"hpcdl-n1", "hpcdl-n2"}  # one rank on each node
    nodes = {n["host"]: n["ranks"] for n in summary["nodes"]}  # the per-node table
    assert sorted(nodes.values()) == [[0], [1]] and set(nodes) == hosts
    (pair,) = summary["preflight"]["pairs"]  # node health: the one node pair's all-reduce was timed
    assert set(pair["nodes"]) == hosts and sorted(pair["ranks"]) == [0, 1] and pair["busbw_gbs"] > 0
    assert not [o for o in summary["preflight"]["outliers"] if o["figure"] == "link_gbs"]  # one pair blames no node
    (start, end) = events.read(run_dir)
    assert start["hosts"] == sorted(hosts) and start["job_id"] == job and end["outcome"] == "completed"
    text = log.read_text()
    assert f"rendezvous hpcdl-n1:{20000 + int(job) % 20000}" in text and "training finished with status 0" in text
    assert "matmul_tflops" in text and "node pairs (an all-reduce between each node's lowest ranks" in text


def _worker_on(node: str, job: str) -> tuple[int, int]:
    """(pid, rank) of the training process the job runs on ``node`` (torchrun's worker: it has RANK)."""
    for proc in Path("/proc").iterdir():
        try:
            env = dict(e.split("=", 1) for e in (proc / "environ").read_text().split("\0") if "=" in e)
        except (OSError, ValueError):
            continue
        ours = env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node
        if ours and "RANK" in env and "TORCHELASTIC_RUN_ID" in env and b"hpc_dl" in (proc / "cmdline").read_bytes():
            return int(proc.name), int(env["RANK"])
    raise AssertionError(f"no training process of job {job} on {node}")


def _two_node_run(tmp_path, *overrides):
    """A two-node MLP job, once it has logged its first window: (job, its log, run dir, the pid and
    rank of its training process on hpcdl-n2)."""
    job = sbatch("--nodes=2", *SMALL, TEMPLATE, *MLP, *overrides, f"log.dir={tmp_path}/runs", cwd=tmp_path,
                 env={"PROJECT": str(ROOT)})  # fmt: skip
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    wait_until(lambda: (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size, 240,
               "the first log window")  # fmt: skip
    return job, tmp_path / f"slurm-hpc_dl-{job}.out", run_dir, *_worker_on("hpcdl-n2", job)


def test_a_node_made_slow_is_named_as_a_straggler_and_in_the_report(slurm, tmp_path):
    job, log, run_dir, pid, rank = _two_node_run(tmp_path, "train.steps=2000", "log.every=40")
    done = threading.Event()

    def slow_down():  # the rank on hpcdl-n2 runs half the time, as on a node with a failing fan
        while not done.is_set():
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.04)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.04)
            except ProcessLookupError:
                return

    stopper = threading.Thread(target=slow_down)
    stopper.start()
    try:
        state = wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400, log=log)
    finally:
        done.set()
        stopper.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert state == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert f"straggler: rank {rank} (hpcdl-n2)" in text and "sbatch --exclude=hpcdl-n2" in text, text[-3000:]
    assert f"straggler: rank {1 - rank}" not in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(s["rank"], s["host"]) for s in summary["stragglers"]] == [(rank, "hpcdl-n2")]
    nodes = {n["host"]: n for n in summary["nodes"]}  # the per-node table shows the node
    assert nodes["hpcdl-n2"]["straggler_windows"] >= 1 and nodes["hpcdl-n1"]["straggler_windows"] == 0
    assert nodes["hpcdl-n2"]["own_s"] > nodes["hpcdl-n1"]["own_s"]
    page = subprocess.run([sys.executable, "-m", "hpc_dl", "report", str(run_dir)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert page.returncode == 0, page.stderr
    html = (run_dir / "report.html").read_text()
    stragglers = html.split('id="stragglers"')[1].split("</section>")[0]
    assert "hpcdl-n2" in stragglers and "hpcdl-n1" not in stragglers


def test_site_like_job_binds_cpus_counts_gres_and_uses_the_infiniband_name(slurm, tmp_path):
    """As at a GPU site: tasks bound to cores, GPUs requested as GRES (--gres=gpu:2 over the template's
    --gpus-per-node=4), a site file naming the rendezvous host's InfiniBand interface (<host>i).
    There is no CUDA: the ranks train on the CPU, one per GPU Slurm gave the node."""
    site = tmp_path / "site.sh"
    site.write_text("export HPC_DL_MASTER_SUFFIX=i NCCL_SOCKET_IFNAME=ib0\n")
    env = {"PROJECT": str(ROOT), "HPC_DL_SETUP": str(site)}
    job = sbatch("--nodes=2", "--gres=gpu:2", "--cpus-per-task=2", "--time=15", TEMPLATE, *MLP, "train.device=cpu",
                 "train.steps=20", "log.every=10", f"log.dir={tmp_path}/runs", cwd=tmp_path, env=env)  # fmt: skip
    log = tmp_path / f"slurm-hpc_dl-{job}.out"
    assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, log=log) == "COMPLETED", log.read_text()
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 4
    ranks = [r for r in _records(run_dir) if "ranks" in r][-1]["ranks"]
    assert sorted(r["host"] for r in ranks) == ["hpcdl-n1"] * 2 + ["hpcdl-n2"] * 2  # two GPUs' worth per node
    assert [r["cpus"] for r in ranks] == [2] * 4, ranks  # each rank may use the job's --cpus-per-task
    assert f"rendezvous hpcdl-n1i:{20000 + int(job) % 20000}" in log.read_text()
    assert json.loads((run_dir / "env.json").read_text())["env"]["NCCL_SOCKET_IFNAME"] == "ib0"  # from the site file


def test_a_rank_stopped_on_another_node_is_named_and_diagnose_agrees(slurm, tmp_path):
    """The hang across nodes: the rank on hpcdl-n2 is stopped (SIGSTOP) mid-run, out of reach of the
    survivor on hpcdl-n1, which names it with its host and the collective after dist.timeout_s; the
    job ends when Slurm tears the step down; the dumps left in RUN_DIR/hang say the same afterwards."""
    job, log, run_dir, pid, rank = _two_node_run(tmp_path, "train.steps=100000", "log.every=5", "dist.timeout_s=15",
                                                 "dist.preflight=false")  # fmt: skip
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        state = wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=240, log=log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    took = time.monotonic() - stopped_at
    text = log.read_text()
    print(f"the job ended {took:.0f} s after the stop ({state})")
    assert state == "FAILED", text[-3000:]
    assert f"rank {rank} (hpcdl-n2) failed or stopped responding" in text, text[-3000:]
    assert "during training (dist.timeout_s = 15 s)" in text
    assert f"rank {rank} (hpcdl-n2) left no trace" in text  # at the gradient all-reduce or a window's all_gather
    assert re.search(r"stopped at (all_reduce|all_gather|broadcast) #\d+ on process group", text)
    diagnosis = subprocess.run([sys.executable, "-m", "hpc_dl", "diagnose", str(run_dir)], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    assert diagnosis.returncode == 0 and f"rank {rank} (hpcdl-n2) left no trace" in diagnosis.stdout
    assert f"rank {1 - rank} (hpcdl-n1)" in diagnosis.stdout.split(";")[0]  # the survivor waits at that collective
    end = events.read(run_dir)[-1]
    assert end["outcome"] == "failed" and f"rank {rank} (hpcdl-n2)" in end["message"]


def test_preempted_job_checkpoints_requeues_and_finishes(slurm, tmp_path):
    env = {"PROJECT": str(ROOT), "WANDB_MODE": "offline"}
    job = sbatch("--nodes=2", *SMALL, TEMPLATE, *MLP, "train.steps=3000", "log.every=25", f"log.dir={tmp_path}/runs",
                 cwd=tmp_path, env=env)  # fmt: skip
    log = tmp_path / f"slurm-hpc_dl-{job}.out"
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and _records(run_dir), what="the first metrics record")
    # What Slurm does before the time limit (--signal=B:USR1@180), sent now instead of waiting.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    wait_for(job, {"PENDING"}, timeout=180, log=log)  # requeued; it starts again about 11 s later
    assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, log=log) == "COMPLETED", log.read_text()

    text = log.read_text()
    assert "caught SIGUSR1" in text and f"requeueing {job} (restart 1)" in text
    assert "Slurm restart 1" in text and "training finished with status 0" in text
    assert job_field(job, "Restarts") == "1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3000 and summary["resumed_from"]  # the same step count as an uninterrupted run
    stopped_at = int(summary["resumed_from"].rsplit("_", 1)[1].split(".")[0])
    assert 0 < stopped_at < 3000
    steps = [r["step"] for r in _records(run_dir) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 3000

    # W&B: one run, resumed (the same id twice), the restart count in its config
    from tests.telemetry.test_wandb import inspect

    first, second = (inspect(run_dir, summary=True, which=i) for i in (0, 1))
    assert first["run_id"] == second["run_id"] and second["config"]["slurm"]["restart_count"] == 1


def test_job_requeued_onto_fewer_nodes_resumes_with_the_same_global_batch(slurm, tmp_path):
    """As when the queue frees fewer nodes than the job had: a 2-node job is pre-empted and, while it
    waits, shrunk to 1 node (`scontrol update NumNodes=1 NumTasks=1`, as a user does to a pending job);
    it restarts with 1 rank and resumes the 2-rank checkpoint, gradient accumulation making up the
    global batch."""
    job = sbatch("--nodes=2", *SMALL, TEMPLATE, *MLP, "train.steps=3000", "log.every=25",
                 f"log.dir={tmp_path}/runs", cwd=tmp_path, env={"PROJECT": str(ROOT)})  # fmt: skip
    log = tmp_path / f"slurm-hpc_dl-{job}.out"
    run_dir = tmp_path / "runs" / f"breast_cancer-mlp-job{job}"
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and _records(run_dir), what="the first metrics record")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    wait_for(job, {"PENDING"}, timeout=180, log=log)
    subprocess.run(["scontrol", "hold", job], check=True, timeout=30)
    subprocess.run(["scontrol", "update", f"jobid={job}", "NumNodes=1", "NumTasks=1"], check=True, timeout=30)
    subprocess.run(["scontrol", "release", job], check=True, timeout=30)
    state = wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, log=log)
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    assert state == "COMPLETED", log.read_text() + show
    text = log.read_text()
    assert f"job {job} restart 1: 1 node(s)" in text, text + show
    assert "note: resuming on 1 rank(s) a run of 2: train.grad_accum 1 -> 2" in text, text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3000 and summary["world_size"] == 1 and summary["resumed_from"]
    steps = [r["step"] for r in _records(run_dir) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 3000  # no step logged twice, none skipped


def test_array_task_requeues_only_itself(slurm, tmp_path):
    out = ["--output=slurm-%A_%a.out", "--error=slurm-%A_%a.out"]
    job = sbatch("--array=0-1", "--nodes=1", *SMALL, *out, TEMPLATE, *MLP[:-1], "train.steps=3000", "log.every=25",
                 f"log.dir={tmp_path}/runs", cwd=tmp_path, env={"PROJECT": str(ROOT)})  # fmt: skip
    runs = {t: tmp_path / "runs" / f"breast_cancer-mlp-job{job}_{t}" for t in (0, 1)}
    wait_until(lambda: (runs[1] / "metrics.jsonl").exists() and _records(runs[1]), what="task 1 training")
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_1"], check=True, timeout=30)
    wait_for(f"{job}_1", {"PENDING"}, timeout=180, log=tmp_path / f"slurm-{job}_1.out")
    for t in (0, 1):
        wait_for(f"{job}_{t}", {"COMPLETED"}, log=tmp_path / f"slurm-{job}_{t}.out")
        assert json.loads((runs[t] / "summary.json").read_text())["steps"] == 3000
    assert job_field(f"{job}_0", "Restarts") == "0" and job_field(f"{job}_1", "Restarts") == "1"
    assert f"requeueing {job}_1 (restart 1)" in (tmp_path / f"slurm-{job}_1.out").read_text()


def test_plain_srun_job_requeues_itself_with_scontrol(slurm, tmp_path):
    """Without the template or submitit: rank 0 runs `scontrol requeue` after the checkpoint."""
    python = ROOT / ".venv" / "bin" / "python"
    args = " ".join(map(str, MLP[:-1]))
    wrap = f"srun --ntasks=1 {python} -m hpc_dl train {args} train.steps=3000 log.every=25 log.dir={tmp_path}/runs"
    job = sbatch("--nodes=1", "--requeue", "--open-mode=append", "--output=slurm-%j.out", "--wrap", wrap,
                 cwd=tmp_path, env={"PYTHONUNBUFFERED": "1"})  # fmt: skip
    run_dir, log = tmp_path / "runs" / f"breast_cancer-mlp-job{job}", tmp_path / f"slurm-{job}.out"
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and _records(run_dir), what="training")
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)  # the job step, not the batch shell
    wait_for(job, {"PENDING"}, timeout=180, log=log)
    assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, log=log) == "COMPLETED", log.read_text()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3000 and job_field(job, "Restarts") == "1"
    assert f"requeued Slurm job {job}" in log.read_text()


def test_strong_scaling_sweep_submits_one_job_per_point(slurm, tmp_path):
    env = {**os.environ, "PROJECT": str(ROOT), "GPUS_PER_NODE": "0", "SBATCH_ARGS": "--cpus-per-task=1 --time=15",
           "SWEEP": "sweep1", "GLOBAL_BATCH": "32"}  # fmt: skip
    cmd = [ROOT / "slurm" / "scaling.sh", "strong", "1 2", *MLP, "train.steps=20", f"log.dir={tmp_path}/runs"]
    out = subprocess.run(list(map(str, cmd)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    jobs = dict(line.split() for line in out.stdout.splitlines() if not line.startswith("#"))
    assert set(jobs) == {"1", "2"}
    for nodes, job in jobs.items():
        log = tmp_path / f"slurm-sweep1-n{nodes}-{job}.out"
        assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, log=log) == "COMPLETED", log.read_text()
        summary = json.loads((tmp_path / "runs" / f"sweep1-n{nodes}" / "summary.json").read_text())
        assert summary["world_size"] == int(nodes) and summary["global_batch_size"] == 32  # strong: fixed global batch
