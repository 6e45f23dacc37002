"""Stopping cleanly on a signal: pre-emption, the time limit, or `scancel --signal`.

Slurm warns a job with a signal (USR1 from slurm/train.sbatch, SIGTERM at pre-emption
and at the time limit). The handler only notes it; after each optimizer step the ranks
agree whether any of them was signalled -- one CPU all-reduce of one integer, issued
after a step and read after the next, so no step waits for it and its cost does not grow
with the job -- so all of them stop after the same step (the one after the signal is seen)
and write one checkpoint together.
The process then exits with EXIT_STOPPED and the job is requeued: by whoever owns the
requeue -- slurm/train.sbatch (HPC_DL_REQUEUE=batch, it works when the ranks run in a
container without Slurm commands), submitit, or else this process with `scontrol requeue`.
"""

import os
import shutil
import signal
import subprocess

from hpc_dl.distributed import cluster

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped with a checkpoint, run it again to continue


class Stopped(Exception):
    """Every rank stopped after ``step`` because of ``signal_name`` and the checkpoint is written."""

    exit_code = EXIT_STOPPED

    def __init__(self, step: int, signal_name: str, checkpoint: str | None):
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint
        super().__init__(f"stopped by SIG{signal_name} after step {step}; checkpoint {checkpoint}")


class SignalStop:
    """Notes the configured signals while installed (``with SignalStop([...]) as stop:``)."""

    def __init__(self, names: list[str]):
        self.signals = [signal.Signals[f"SIG{n.upper().removeprefix('SIG')}"] for n in names]
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name.removeprefix("SIG")

    def request(self, name: str) -> None:
        """A stop asked for by code rather than a signal (submitit's checkpoint hook)."""
        self.received = self.received or name

    def agreed(self, strategy) -> bool:
        """True on every rank once any rank has been signalled."""
        return strategy.any_rank(self.received is not None) if self.signals or self.received else False


def _requeued_elsewhere() -> str | None:
    """Why this process does not requeue the job itself, or None when it does."""
    owner = os.environ.get("HPC_DL_REQUEUE", "")
    if owner in ("batch", "submitit"):
        return f"the job is requeued by {owner}"
    if owner == "off":
        return "not requeued (HPC_DL_REQUEUE=off)"
    if "SLURM_JOB_ID" not in os.environ:
        return "not a Slurm job: run the same command with --resume auto to continue"
    if not shutil.which("scontrol"):
        return "no scontrol here (a container?): requeue the job from outside, or use slurm/train.sbatch"
    return None


def requeue_self(stopped: Stopped, say) -> None:
    """Requeue this Slurm job (only this task of an array) unless someone else owns the requeue, and
    ``say`` so. ``scontrol requeue`` ends this job step at once, and with it the output srun still
    forwards, so the line is said first; a failed requeue is said after it."""
    reason = _requeued_elsewhere()
    if reason:
        say(f"{stopped}; {reason}")
        return
    job = cluster.job_id()
    say(f"{stopped}; requeued Slurm job {job}")
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        say(f"scontrol requeue {job} failed: {proc.stderr.strip()}; the job is NOT requeued")
