"""Submitting to and watching the test cluster."""

import subprocess
import time
from pathlib import Path


def sbatch(*args, cwd: Path, env: dict | None = None) -> str:
    import os

    proc = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    for item in out.split():
        key, _, value = item.partition("=")
        if key == field:
            return value
    return None


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(job: str, states: set[str], timeout: float = 300, log: Path | None = None) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = job_field(job, "JobState")
        if state in states:
            return state
        if state in ENDED:
            break
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"job {job} is {state}, not {states} (waited up to {timeout} s)\n{tail}")


def wait_until(predicate, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
