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
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from hpc_dl import config
from hpc_dl.distributed import cluster
from hpc_dl.errors import JobError, UserError

SUBMITIT_SIGNAL = "USR2"  # submitit's pre-emption warning (SUBMITIT_PREEMPT_SIGNAL changes it)


class TrainJob:
    """The callable submitit pickles and runs in every task."""

    def __call__(self, config_path: str | None, overrides: list[str], run_dir: str | None) -> dict | None:
        import submitit

        from hpc_dl.training.run import train
        from hpc_dl.training.stop import Stopped

        env = submitit.JobEnvironment()
        _distributed_env(env)
        os.environ["HPC_DL_REQUEUE"] = "submitit"
        sig = _signal()
        cfg = config.load(config_path, job_overrides(overrides))
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


def _signal() -> str:
    return os.environ.get("SUBMITIT_PREEMPT_SIGNAL", SUBMITIT_SIGNAL)


def job_overrides(overrides: list[str]) -> list[str]:
    """What every task trains with: the user's overrides, and submitit's warning signal as the stop signal."""
    return [*overrides, f"train.stop_signals=[{_signal()}]"]


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
        "MASTER_PORT": str(cluster.rendezvous_port({**os.environ, "SLURM_JOB_ID": str(env.job_id)})),
    })  # fmt: skip


def resources(cfg: config.Config, flags: dict) -> config.SlurmConfig:
    """The config's slurm section with the command-line flags that were given applied over it."""
    s = config.SlurmConfig(**{**vars(cfg.slurm), **{k: v for k, v in flags.items() if v is not None}})
    if s.gres and s.gpus_per_node:
        raise UserError(f"slurm.gres = {s.gres!r} and slurm.gpus_per_node = {s.gpus_per_node}: give one of them")
    if s.tasks_per_node is None:
        s.tasks_per_node = s.gpus_per_node or gres_gpus(s.gres) or 1
    return s


def gres_gpus(gres: str | None) -> int:
    """GPUs per node in a GRES request: gpu:4 or gpu:h100:4 (among others, comma-separated) -> 4."""
    for item in (gres or "").split(","):
        name, *rest = item.strip().split(":")
        if name == "gpu" and rest and rest[-1].isdigit():
            return int(rest[-1])
    return 0


def slurm_parameters(s: config.SlurmConfig) -> dict:
    """submitit's SlurmExecutor parameters for these resources."""
    # wckey None: no --wckey line (submitit's default would write --wckey=submitit).
    params = {"nodes": s.nodes, "ntasks_per_node": s.tasks_per_node, "cpus_per_task": s.cpus_per_task,
              "time": s.time_min, "signal_delay_s": s.signal_delay_s, "job_name": "hpc_dl",
              "wckey": s.wckey}  # fmt: skip
    # srun does not take --cpus-per-task from sbatch (Slurm >= 22.05): without it each task asks for
    # one CPU, and where tasks are bound to cores, its threads and loader workers share that one.
    params["srun_args"] = ["--cpus-per-task", str(s.cpus_per_task)]
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem"] = f"{round(s.mem_gb * 1024)}M"
    if s.setup:
        params["setup"] = list(s.setup)
    params |= {k: getattr(s, k) for k in ("partition", "account", "qos", "constraint", "gres") if getattr(s, k)}
    return params


def container_python(s: config.SlurmConfig, paths: list) -> str | None:
    """The command that runs Python in every task: the container's, with submitit's folder (job
    pickles, logs) and ``paths`` (the runs' folder, the config's) bound, or None for this interpreter."""
    if not s.container:
        return None
    folder = s.folder.split("%", 1)[0] or "."  # the part before the first %j
    binds = dict.fromkeys(str(Path(p).resolve()) for p in [folder, *paths]) | dict.fromkeys(s.bind)
    return shlex.join(["apptainer", "exec", "--nv", "--bind", ",".join(binds), s.container, "python"])


def executor(s: config.SlurmConfig, local: bool = False, binds: list = (), dry_run: bool = False):
    """submitit's Slurm executor (or its local one) with these resources; ``binds``: what a container
    must see. ``dry_run``: one that only renders the batch script, so it needs no Slurm on this
    machine (a laptop preparing a job)."""
    try:
        import submitit
    except ImportError:
        raise UserError("hpc-dl submit needs submitit: pip install submitit") from None
    if local:
        ex = submitit.LocalExecutor(folder=s.folder)
        ex.update_parameters(timeout_min=s.time_min, tasks_per_node=s.tasks_per_node, gpus_per_node=s.gpus_per_node)
        return ex

    class RenderOnly(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # where submitit looks for srun on PATH
            return 1

    cls = RenderOnly if dry_run else submitit.SlurmExecutor
    ex = cls(folder=s.folder, max_num_timeout=s.max_restarts, python=container_python(s, list(binds)))
    ex.update_parameters(**slurm_parameters(s))
    return ex


def submit(config_path, overrides, flags: dict, run_dir=None, local=False, dry_run=False, wait=False) -> int:
    cfg = config.load(config_path, overrides)  # validate before anything is submitted
    s = resources(cfg, flags)
    binds = [cfg.log.dir, *([Path(config.find(config_path)).parent] if config_path else [])]
    if dry_run:  # rendered by the executor that would submit it, so the two cannot differ
        ex = executor(s, binds=binds, dry_run=True)
        print(ex._make_submission_file_text(ex._submitit_command_str, "dry-run"))
        run = job_overrides(overrides)
        cmd = ["hpc-dl", "train", *([str(config_path)] if config_path else []), *run]
        cmd += [*(["--run-dir", str(run_dir)] if run_dir else []), "--resume", "auto"]
        print(f"# Every task runs hpc_dl.launch.submit.TrainJob (pickled by submitit), which is\n"
              f"#   {shlex.join(cmd)}\n# with this config:")  # fmt: skip
        print(config.to_yaml(config.load(config_path, run)), end="")
        return 0
    if not local and not shutil.which("sbatch"):
        raise UserError("no Slurm here (sbatch is not on PATH); --local runs the job with submitit's local executor")
    ex = executor(s, local, binds=binds)
    from submitit.core.utils import FailedJobError

    try:
        job = ex.submit(TrainJob(), str(config_path) if config_path else None, list(overrides), run_dir)
    except FailedJobError as e:
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
        test = summary["test"]  # regression: RMSE in the target's units
        result = f"accuracy {test['accuracy']:.4f}" if "accuracy" in test else f"RMSE {test['rmse']:.4g}"
        print(f"done: test {result} ({summary['steps']} steps on "
              f"{summary['world_size']} process(es)); results: {summary['run_dir']}")  # fmt: skip
    return 0
