"""`hpc-dl submit`: the same training as slurm/train.sbatch, submitted from Python with submitit.

One Slurm task per process (per GPU, or one per node without GPUs); each task gets
RANK/WORLD_SIZE/MASTER_ADDR from submitit's job environment, so the trainer forms the
group exactly as under torchrun. Pre-emption: submitit warns the job with its signal
(USR2); the trainer takes that one signal over, every rank checkpoints after the same
step, and then submitit's own checkpoint/requeue runs on rank 0 (``TrainJob.checkpoint``
resubmits the same job, which resumes). SIGTERM stays with submitit, so the two never
fight over a signal.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from hpc_dl import config
from hpc_dl.errors import JobError, UserError

SUBMITIT_SIGNAL = "USR2"  # submitit's pre-emption warning (SUBMITIT_PREEMPT_SIGNAL changes it)


class TrainJob:
    """The callable submitit pickles and runs in every task."""

    def __call__(self, config_path: str | None, overrides: list[str], run_dir: str | None) -> dict | None:
        import submitit

        from hpc_dl.train.run import train
        from hpc_dl.train.stop import Stopped

        env = submitit.JobEnvironment()
        _distributed_env(env)
        os.environ["HPC_DL_REQUEUE"] = "submitit"
        sig = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", SUBMITIT_SIGNAL)
        cfg = config.load(config_path, [*overrides, f"train.stop_signals=[{sig}]"])
        submitit_handler = signal.getsignal(getattr(signal, f"SIG{sig}"))
        try:
            return train(cfg, run_dir=run_dir, resume="auto")
        except Stopped:
            # Every rank's checkpoint is written: now submitit's own hook (rank 0 only) calls
            # self.checkpoint and requeues the job; it ends this process.
            if callable(submitit_handler):
                submitit_handler(getattr(signal, f"SIG{sig}"), None)
            raise

    def checkpoint(self, *args):
        """Called by submitit before it requeues: run the same job again; it resumes."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(), *args)


def _distributed_env(env) -> None:
    """Under Slurm the trainer reads srun's variables itself; submitit's local executor gets
    torchrun-style ones, with rank 0 hosting the store (there is no torchrun agent)."""
    if env.num_tasks == 1 or "SLURM_PROCID" in os.environ:
        return
    os.environ.update({
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(env.num_nodes, 1)), "GROUP_WORLD_SIZE": str(env.num_nodes),
        "MASTER_ADDR": env.hostnames[0] if env.hostnames else "127.0.0.1",
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
    })  # fmt: skip


def resources(cfg: config.Config, flags: dict) -> config.SlurmConfig:
    """The config's slurm section with the command-line flags that were given applied over it."""
    s = config.SlurmConfig(**{**vars(cfg.slurm), **{k: v for k, v in flags.items() if v is not None}})
    if s.tasks_per_node is None:
        s.tasks_per_node = s.gpus_per_node or 1
    return s


def executor(s: config.SlurmConfig, local: bool = False):
    """submitit's Slurm executor (or its local one) with these resources."""
    import submitit

    if local:
        ex = submitit.LocalExecutor(folder=s.folder)
        ex.update_parameters(timeout_min=s.time_min, tasks_per_node=s.tasks_per_node, gpus_per_node=s.gpus_per_node)
        return ex
    ex = submitit.AutoExecutor(folder=s.folder, cluster="slurm", slurm_max_num_timeout=s.max_restarts)
    params = {"nodes": s.nodes, "tasks_per_node": s.tasks_per_node, "cpus_per_task": s.cpus_per_task,
              "timeout_min": s.time_min, "slurm_signal_delay_s": s.signal_delay_s, "name": "hpc_dl"}  # fmt: skip
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    params |= {f"slurm_{k}": getattr(s, k) for k in ("partition", "account", "qos", "constraint") if getattr(s, k)}
    ex.update_parameters(**params)
    return ex


def submit(config_path, overrides, flags: dict, run_dir=None, local=False, dry_run=False, wait=False) -> int:
    cfg = config.load(config_path, overrides)  # validate before anything is submitted
    s = resources(cfg, flags)
    try:
        import submitit
    except ImportError:
        raise UserError("hpc-dl submit needs submitit: pip install submitit") from None
    if dry_run:  # rendered by the executor that would submit it, so the two cannot differ
        slurm_ex = executor(s)._executor
        print(slurm_ex._make_submission_file_text(slurm_ex._submitit_command_str, "dry-run"))
        return 0
    if not local and not shutil.which("sbatch"):
        raise UserError("no Slurm here (sbatch is not on PATH); --local runs the job with submitit's local executor")
    try:
        job = executor(s, local).submit(TrainJob(), str(config_path) if config_path else None, list(overrides), run_dir)
    except submitit.core.utils.FailedJobError as e:
        raise UserError(f"sbatch refused the job: {' | '.join(str(e).strip().splitlines()[-3:])}") from None
    print(f"submitted job {job.job_id} ({'local' if local else 'slurm'}): {s.nodes} node(s) x {s.tasks_per_node} "
          f"task(s)\nlog: {job.paths.stdout}\nerr: {job.paths.stderr}", flush=True)  # fmt: skip
    return _follow(job) if wait else 0


def _follow(job) -> int:
    """Print the job's log (rank 0's task) as it grows; the job's result decides the exit status."""
    seen = {"out": 0}
    path = Path(job.paths.stdout)

    def show():
        if path.exists():
            text = path.read_text(errors="replace")
            sys.stdout.write(text[seen["out"] :])
            sys.stdout.flush()
            seen["out"] = len(text)

    while not job.done():
        show()
        time.sleep(1)
    show()
    try:
        summary = job.results()[0]  # one result per task; rank 0 has the summary
    except Exception:  # noqa: BLE001 - the job's own failure; its stderr says why
        err = Path(job.paths.stderr)
        lines = [x for x in err.read_text(errors="replace").splitlines() if x.strip()] if err.exists() else []
        raise JobError(f"job {job.job_id} failed ({job.state}); end of {err}:\n" + "\n".join(lines[-6:])) from None
    print(f"job {job.job_id} finished: {job.state}")
    if summary:
        print(f"done: test accuracy {summary['test']['accuracy']:.4f} ({summary['steps']} steps on "
              f"{summary['world_size']} process(es)); results: {summary['run_dir']}")  # fmt: skip
    return 0
