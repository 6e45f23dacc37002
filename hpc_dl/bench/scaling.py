"""Weak and strong scaling sweeps: one training run per point (nodes x processes per node),
each a local ``torchrun`` or a Slurm job (submitit), read back from its run directory.

Batch per point:
  weak    every point trains with the config's per-device batch (data.batch_size)
  strong  every point trains the same global batch, split over its devices
          (default: data.batch_size x the smallest point's devices)

Speed-up and efficiency, against the base point (the smallest point that completed):
  speed-up    S = X / X_base          X: training samples per second, all devices together
  efficiency  E = S * D_base / D      D: devices
Weak: E is the per-device throughput ratio (X/D) / (X_base/D_base). Strong: with the
global batch B fixed, step time T = B / X, so E = T_base D_base / (T D), the usual
T1 / (N TN) normalised to the base point.

Each point's figures are the medians over its training log windows (the first window,
with warm-up and compilation, left out): throughput, MFU, the step-time breakdown and
the all-reduce bandwidth preflight measured. Points that fail or run out of time stay
in the report, with the reason.
"""

import csv
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_dl import config
from hpc_dl.errors import UserError
from hpc_dl.fileio import write_json, write_text
from hpc_dl.telemetry import manifest
from hpc_dl.telemetry.record import RATES, STEP_TIMES
from hpc_dl.telemetry.timing import bus_factor

FIGURES = (*RATES, *STEP_TIMES, "mfu", "tflops_per_device")  # a point's medians, from its summary
GRAD_BYTES_PER_PARAMETER = 4  # DDP all-reduces fp32 gradients (autocast leaves parameters in fp32)


@dataclass(frozen=True)
class Point:
    nodes: int
    procs: int  # processes (devices) per node

    @property
    def devices(self) -> int:
        return self.nodes * self.procs

    @property
    def label(self) -> str:
        return f"{self.nodes}x{self.procs}"


def parse_points(text: str, procs_per_node: int | None = None) -> list[Point]:
    """'1x1,1x2,2x4' (nodes x processes per node), or '1,2,4' nodes with ``procs_per_node``."""
    points = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        nodes, _, procs = item.partition("x")
        if not procs and procs_per_node:
            procs = str(procs_per_node)
        if not (nodes.isdigit() and procs.isdigit() and int(nodes) > 0 and int(procs) > 0):
            raise UserError(f"--points: {item!r} is not NODESxPROCS (e.g. 1x2), or NODES with --procs-per-node")
        points.append(Point(int(nodes), int(procs)))
    if not points:
        raise UserError("--points: no points given (e.g. --points 1x1,1x2)")
    if len(set(points)) != len(points):
        raise UserError(f"--points: {text!r} names a point twice")
    return sorted(points, key=lambda p: (p.devices, p.nodes))


def per_device_batch(mode: str, points: list[Point], batch: int, global_batch: int | None) -> dict[Point, int]:
    """The data.batch_size each point trains with."""
    if mode == "weak":
        if global_batch:
            raise UserError("--global-batch is for strong scaling; weak scaling keeps data.batch_size per device")
        return dict.fromkeys(points, batch)
    total = global_batch or batch * points[0].devices
    uneven = [p.label for p in points if total % p.devices]
    if uneven:
        raise UserError(
            f"strong scaling: the global batch {total} does not split evenly over the devices of point(s) "
            f"{', '.join(uneven)}; choose a --global-batch that every point's device count divides"
        )
    return {p: total // p.devices for p in points}


def speedup_efficiency(devices: int, throughput: float, base_devices: int, base_throughput: float):
    """(speed-up, efficiency) of a point against the base point; see the module docstring."""
    speedup = throughput / base_throughput
    return speedup, speedup * base_devices / devices


# ------------------------------------------------------------------ running points
def _strategy(cfg: config.Config) -> str:
    return "ddp" if cfg.dist.strategy == "single" else cfg.dist.strategy  # DeepSpeed stays DeepSpeed


def _failure(log: Path) -> str:
    """The line that says why: our 'error: ...' if there is one, else the last line."""
    if not log.exists():
        return "no log"
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    said = [x for x in lines if x.startswith("error:") or "Error:" in x]
    return (said or lines or ["no output"])[-1][:300]


def run_local(command: list[str], point: Point, log: Path, timeout_s: float | None) -> tuple[str, str | None]:
    """One point as ``torchrun --standalone --nproc_per_node=P``; (status, reason)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={point.procs}",
           "-m", "hpc_dl", *command]  # fmt: skip
    # One thread per process unless the user chose: a CPU point's "device" is then one core,
    # whatever the number of processes (torchrun does the same for more than one process).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return "timeout", f"still running after {timeout_s:g} s; stopped"
        except BaseException:
            _kill(proc)
            raise
    return ("ok", None) if code == 0 else ("failed", f"exit {code}: {_failure(log)}")


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run_slurm(jobs: list[tuple[Point, list[str]]], cfg: config.Config, folder: Path, time_min: int | None, say=print):
    """Every point as its own Slurm job through submitit, submitted together; waits for all.
    Returns {label: (status, reason, job id)}."""
    import submitit

    from hpc_dl.launch.submit import TrainJob, executor, resources

    submitted = {}
    for point, (config_path, overrides, run_dir) in jobs:
        gpus = point.procs if cfg.slurm.gpus_per_node else 0
        flags = {"nodes": point.nodes, "tasks_per_node": point.procs, "gpus_per_node": gpus, "max_restarts": 0,
                 "folder": str(folder / "%j"), "time_min": math.ceil(time_min) if time_min else None}  # fmt: skip
        ex = executor(resources(cfg, flags))
        ex.update_parameters(exclusive=True)  # no other job on a point's nodes while it is timed
        try:
            job = ex.submit(TrainJob(), config_path, overrides, run_dir)
        except submitit.core.utils.FailedJobError as e:
            submitted[point.label] = (None, f"sbatch refused it: {str(e).strip().splitlines()[-1]}")
            continue
        submitted[point.label] = (job, None)
        say(f"point {point.label}: Slurm job {job.job_id}")
    results = {}
    try:
        while any(job and not job.done() for job, _ in submitted.values()):
            time.sleep(2)
    except BaseException:
        for job, _ in submitted.values():
            if job and not job.done():
                job.cancel(check=False)
        raise
    for label, (job, refused) in submitted.items():
        if job is None:
            results[label] = ("failed", refused, None)
            continue
        try:
            job.results()
            results[label] = ("ok", None, job.job_id)
        except Exception:  # noqa: BLE001 - the job's own failure: its state and log say why
            state = job.state
            status = "timeout" if "TIMEOUT" in state else "failed"
            results[label] = (status, f"Slurm state {state}: {_failure(Path(job.paths.stderr))}", job.job_id)
    return results


# ------------------------------------------------------------------ reading results
def collect(run_dir: Path) -> dict:
    """A completed point's figures from its summary.json."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    t = summary.get("throughput", {})
    row = {k: t.get(k) for k in FIGURES}
    row["allreduce_busbw_gbs"] = (summary.get("preflight") or {}).get("busbw_gbs")
    n = summary["world_size"]
    comm = t.get("comm_s")
    # Gradient bytes over the summed bucket all-reduce times, which overlap with backward and
    # queue behind each other: a lower bound on what the links did during training.
    row["grad_busbw_gbs"] = (
        GRAD_BYTES_PER_PARAMETER * summary["parameters"] / comm / 1e9 * bus_factor("all_reduce", n)
        if comm and n > 1
        else None
    )
    return row


def analyse(rows: list[dict]) -> dict | None:
    """Add speed-up, ideal speed-up and efficiency to every completed row (one formula for weak
    and strong: see the module docstring); returns the base row."""
    done = [r for r in rows if r["status"] == "ok" and r.get("samples_per_s")]
    base = min(done, key=lambda r: (r["devices"], r["nodes"])) if done else None
    for r in rows:
        r["ideal_speedup"] = r["devices"] / base["devices"] if base else None
        r["speedup"] = r["efficiency"] = None
        if r in done:
            r["speedup"], r["efficiency"] = speedup_efficiency(
                r["devices"], r["samples_per_s"], base["devices"], base["samples_per_s"]
            )
    return base


COLUMNS = ["point", "nodes", "procs_per_node", "devices", "status", "batch_per_device", "global_batch", *FIGURES,
           "allreduce_busbw_gbs", "grad_busbw_gbs", "ideal_speedup", "speedup", "efficiency", "reason", "job_id",
           "run_dir"]  # fmt: skip


def _cell(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(report: dict) -> str:
    cols = [("point", "point"), ("devices", "devices"), ("status", "status"), ("batch_per_device", "batch/dev"),
            ("global_batch", "global batch"), ("samples_per_s", "samples/s"), ("step_s", "step s"),
            ("data_s", "data s"), ("compute_s", "compute s"), ("optimizer_s", "optim s"), ("comm_s", "comm s"),
            ("mfu", "MFU"), ("allreduce_busbw_gbs", "busbw GB/s"), ("speedup", "speed-up"),
            ("ideal_speedup", "ideal"), ("efficiency", "efficiency")]  # fmt: skip
    lines = [
        f"# {report['mode']} scaling: {report['sweep']}",
        "",
        f"config: {report['config'] or 'embedded default'} {' '.join(report['overrides'])}".rstrip(),
        f"launcher: {report['launcher']}; base point: {report['base'] or 'none completed'}; "
        "efficiency = speed-up x base devices / devices",
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in report["points"]:
        cells = [_cell(r.get(k)) for k, _ in cols]
        if r["status"] != "ok":
            cells[2] = f"**{r['status']}**"
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in report["points"] if r["status"] != "ok"]
    if failed:
        lines += ["", *(f"- {r['point']}: {r['status']}: {r['reason']}" for r in failed)]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    fig = figure(report)
    fig.savefig(path)
    fig.clf()


def figure(report: dict):
    from hpc_dl.telemetry.plots import device_axis, plt

    rows = report["points"]
    ok = [r for r in rows if r.get("efficiency") is not None]
    bad = [r for r in rows if r["status"] != "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    if ok:
        base = next(r for r in rows if r["point"] == report["base"])
        devices = [r["devices"] for r in rows]
        left.plot([r["devices"] for r in ok], [r["samples_per_s"] for r in ok], "o-", label="measured")
        left.plot(devices, [base["samples_per_s"] * d / base["devices"] for d in devices], "k--", label="ideal")
        right.plot([r["devices"] for r in ok], [r["efficiency"] for r in ok], "o-", label="measured")
        right.axhline(1.0, color="k", linestyle="--", label="ideal")
    for r in bad:
        for ax in (left, right):
            ax.axvline(r["devices"], color="tab:red", alpha=0.4)
            ax.annotate(f"{r['point']} {r['status']}", (r["devices"], 0), color="tab:red", rotation=90,
                        xycoords=("data", "axes fraction"), va="bottom")  # fmt: skip
    left.set_ylabel("training samples/s (all devices)")
    right.set_ylabel("scaling efficiency")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        device_axis(ax, [(r["devices"], r["nodes"]) for r in rows])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['mode']} scaling: {report['sweep']}")
    fig.tight_layout()
    plt.close(fig)  # drawn and saved by the caller; closed here so pyplot keeps no reference
    return fig


def write(report: dict, out: Path) -> list[Path]:
    """scaling.json, scaling.csv, scaling.md and scaling.png in ``out``."""
    paths = [out / f"scaling.{ext}" for ext in ("json", "csv", "md", "png")]
    write_json(paths[0], report)
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(report["points"])
    write_text(paths[2], markdown(report))
    plot(report, paths[3])
    return paths


def log_to_wandb(cfg: config.Config, out: Path, report: dict, plot_path: Path, say=print) -> None:
    """A summary run in the sweep's W&B group (beside the points' own runs): the table and plot."""
    if not cfg.log.wandb:
        return
    from hpc_dl.telemetry.wandb_run import WandbRun

    dashboard = WandbRun.start(cfg, out, report["manifest"], say=say)
    if dashboard is None:
        return
    import wandb

    try:
        table = wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in report["points"]])
        dashboard.run.log({"scaling/table": table, "scaling/plot": wandb.Image(str(plot_path))})
        dashboard.run.summary.update(
            {f"scaling/efficiency/{r['point']}": r["efficiency"] for r in report["points"] if r.get("efficiency")}
        )
    finally:
        dashboard.finish(None, [], say=say)


# ------------------------------------------------------------------ the sweep
def sweep(config_path, overrides, mode, points, out: Path, launcher="local", global_batch=None,
          timeout_min=None, say=print) -> dict:  # fmt: skip
    cfg = config.load(config_path, overrides)  # validate before anything runs
    batch = per_device_batch(mode, points, cfg.data.batch_size, global_batch)
    if launcher == "local":
        for p in points:
            if p.nodes != 1:
                raise UserError(f"point {p.label}: a local sweep runs on this machine (1 node); use --launcher slurm")
    out.mkdir(parents=True, exist_ok=True)
    name = out.name
    rows, jobs = [], []
    for p in points:
        run_dir = out / f"{name}-{p.label}"
        extra = [f"dist.strategy={_strategy(cfg)}", f"data.batch_size={batch[p]}", f"log.wandb_group={name}",
                 "log.wandb_job_type=scaling", "log.progress=plain"]  # fmt: skip
        rows.append({"point": p.label, "nodes": p.nodes, "procs_per_node": p.procs, "devices": p.devices,
                     "batch_per_device": batch[p], "global_batch": batch[p] * cfg.train.grad_accum * p.devices,
                     "run_dir": str(run_dir), "job_id": None})  # fmt: skip
        jobs.append((p, (str(config_path) if config_path else None, [*overrides, *extra], str(run_dir))))
    if launcher == "local":
        for (p, (path, ovr, run_dir)), row in zip(jobs, rows):
            say(f"point {p.label}: {p.devices} process(es), batch {row['batch_per_device']} per device ...")
            command = ["train", *([path] if path else []), *ovr, "--run-dir", run_dir]
            timeout = timeout_min * 60 if timeout_min else None
            row["status"], row["reason"] = run_local(command, p, out / f"{name}-{p.label}.log", timeout)
    else:
        results = run_slurm(jobs, cfg, out / "slurm", timeout_min, say=say)
        for row in rows:
            row["status"], row["reason"], row["job_id"] = results[row["point"]]
    for row in rows:
        if row["status"] == "ok":
            row.update(collect(Path(row["run_dir"])))
        else:
            row.update(dict.fromkeys((*FIGURES, "allreduce_busbw_gbs", "grad_busbw_gbs")))
        say(f"point {row['point']}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else "")
            + (f", {row['samples_per_s']:.1f} samples/s" if row.get("samples_per_s") else ""))  # fmt: skip
    base = analyse(rows)
    report = {
        "benchmark": "scaling",
        "mode": mode,
        "sweep": name,
        "launcher": launcher,
        "config": str(config_path) if config_path else None,
        "overrides": list(overrides),
        "base": base["point"] if base else None,
        "definitions": "speedup = X/X_base (X: samples/s); efficiency = speedup * D_base / D (D: devices)",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "manifest": manifest.environment(),
        "points": rows,
    }
    paths = write(report, out)
    report_cfg = config.load(config_path, [*overrides, f"log.wandb_group={name}", "log.wandb_job_type=scaling-report"])
    log_to_wandb(report_cfg, out, report, paths[3], say=say)
    return report
