"""Values that end up in a batch script or in shell arithmetic are refused (exit 2) before anything is
submitted: control characters in config values (`hpc-dl submit`), non-integers in slurm/scaling.sh and
slurm/train.sbatch. No cluster: stub Slurm commands on PATH record their calls."""

import os
import shlex
import subprocess

import pytest

from tests.conftest import ROOT, run_cli
from tests.slurm import stubs

STUBS = {
    # Records the call; runs slurm/train.sbatch (only that script) as a one-node job would.
    "sbatch": """
echo "$*" >> "$FAKE_SLURM/sbatch.calls"
PARSABLE=""; [[ " $* " == *" --parsable "* ]] && PARSABLE=1
while [[ ${1:-} == -* ]]; do shift; done
if [[ ${1:-} == */train.sbatch ]]; then
    SLURM_JOB_ID=42 SLURM_JOB_NODELIST=node1 SLURM_NNODES=1 SLURM_SUBMIT_DIR=$PWD \\
        bash "$@" >> "$FAKE_SLURM/job.log" 2>&1
fi
if [ -n "$PARSABLE" ]; then echo 42; else echo "Submitted batch job 42"; fi
""",
    "srun": 'while [[ ${1:-} == -* ]]; do shift; done\nexec "$@"',  # runs the command once, here
    "scontrol": '[ "$*" = "show hostnames node1" ] && echo node1 || echo "$*" >> "$FAKE_SLURM/scontrol.calls"',
    "scancel": 'echo "$*" >> "$FAKE_SLURM/scancel.calls"',
    "torchrun": "exit 0",
}


@pytest.fixture
def fake(tmp_path):
    """A folder with stub Slurm commands and a clean environment that puts them first on PATH."""
    bin_dir = stubs.install(tmp_path, STUBS)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_SLURM": str(tmp_path),
           "PROJECT": str(tmp_path), "VENV": str(tmp_path / "venv")}  # fmt: skip
    return tmp_path, env


def hostile(marker) -> str:
    """A value that runs a command if bash evaluates it in arithmetic: the subscript of a set variable (under
    set -u an unset one stops bash first). No space, as node lists are split at spaces."""
    return f"HOME[$(>{marker})]"


# ------------------------------------------------------- config values in the submitit script
SCRIPT_KEYS = ["partition", "account", "qos", "constraint", "folder"]
BAD = {"newline": "proj\nrm -rf x", "tab": "proj\ttouch x", "escape": "proj\x1b[2J", "delete": "proj\x7f"}


def refused(proc, key, value):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: {key} = {value!r}: control characters are not allowed" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line: the newline is shown escaped
    assert "#SBATCH" not in proc.stdout


@pytest.mark.parametrize("key", SCRIPT_KEYS)
def test_submit_flag_with_a_control_character_is_refused(fake, key):
    tmp, env = fake
    value = BAD["newline"]
    proc = run_cli("submit", "--dry-run", f"--{key}", value, cwd=tmp, env=env, check=False)
    refused(proc, f"slurm.{key}", value)


@pytest.mark.parametrize("key", [*(f"slurm.{k}" for k in SCRIPT_KEYS), "log.dir"])  # log.dir: bench scaling's folder
def test_override_with_a_newline_is_refused(fake, key):
    tmp, env = fake
    item = f'{key}="proj\\nrm -rf x"'  # YAML double quotes keep the newline (a bare one is folded to a space)
    for command in (["config"], ["submit", "--dry-run"]):
        refused(run_cli(*command, item, cwd=tmp, env=env, check=False), key, BAD["newline"])


@pytest.mark.parametrize("kind", ["tab", "escape", "delete"])
def test_other_control_characters_are_refused(fake, kind):
    tmp, env = fake
    proc = run_cli("config", f"slurm.account={BAD[kind]}", cwd=tmp, env=env, check=False)
    refused(proc, "slurm.account", BAD[kind])


def test_submit_refuses_before_anything_is_submitted_or_written(fake):
    tmp, env = fake
    value = BAD["newline"]
    proc = run_cli("submit", "--account", value, "--folder", tmp / "logs" / "%j", cwd=tmp, env=env, check=False)
    refused(proc, "slurm.account", value)
    assert not (tmp / "sbatch.calls").exists() and not (tmp / "logs").exists()


def test_bench_scaling_refuses_a_log_dir_written_into_its_script(fake):
    tmp, env = fake
    value = BAD["newline"]
    proc = run_cli("bench", "scaling", "--mode", "weak", "--points", "1x1", "--launcher", "slurm",
                   'log.dir="proj\\nrm -rf x"', cwd=tmp, env=env, check=False, timeout=60)  # fmt: skip
    refused(proc, "log.dir", value)
    assert not (tmp / "sbatch.calls").exists() and not (tmp / value).exists()


def test_dry_run_quotes_paths_on_the_shell_lines(fake):
    tmp, env = fake
    folder = f"{tmp}/a b/$(touch {tmp}/MARKER)/%j"
    out = run_cli("submit", "--dry-run", "--folder", folder, "--account", "p; touch x", cwd=tmp, env=env).stdout
    assert "#SBATCH --account='p; touch x'" in out
    (srun,) = [shlex.split(line) for line in out.splitlines() if line.startswith("srun ")]
    assert srun[srun.index("--output") + 1] == f"{folder}/%j_%t_log.out" and srun[-1] == folder
    assert not (tmp / "MARKER").exists()


# ------------------------------------------------------- slurm/scaling.sh
SCALING = str(ROOT / "slurm" / "scaling.sh")
CONFIG = str(ROOT / "configs" / "digits_cnn.yaml")


def scaling(env, cwd, mode="weak", nodes="1", **variables):
    return subprocess.run(["bash", SCALING, mode, nodes, CONFIG], env={**env, **variables}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "name, args",
    [
        ("GPUS_PER_NODE", {}),
        ("BATCH", {"mode": "strong"}),
        ("GLOBAL_BATCH", {"mode": "strong"}),
        ("NPROC_PER_NODE", {}),  # not used by scaling.sh: it reaches train.sbatch's arithmetic on every node
        ("NODES", {"mode": "strong", "BATCH": "8"}),
    ],
)
def test_scaling_refuses_a_non_integer_before_any_arithmetic(fake, name, args):
    tmp, env = fake
    marker = tmp / "MARKER"
    if name == "NODES":
        args = {**args, "nodes": f"{hostile(marker)} 2"}
    else:
        args = {**args, name: hostile(marker)}
    proc = scaling(env, tmp, **args)
    assert not marker.exists(), "the value ran a command"
    assert proc.returncode == 2 and name in proc.stderr, proc.stderr
    assert not (tmp / "sbatch.calls").exists()


def test_scaling_still_submits_one_job_per_point(fake):
    tmp, env = fake
    proc = scaling(env, tmp, mode="strong", nodes="1 2", GPUS_PER_NODE="2", BATCH="8")
    assert proc.returncode == 0, proc.stderr
    one, two = (tmp / "sbatch.calls").read_text().splitlines()
    assert "--nodes=1" in one and "data.batch_size=8" in one
    assert "--nodes=2" in two and "data.batch_size=4" in two


# ------------------------------------------------------- slurm/train.sbatch
TRAIN = str(ROOT / "slurm" / "train.sbatch")


def train_sbatch(env, cwd, **variables):
    job = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "SLURM_SUBMIT_DIR": str(cwd)}
    return subprocess.run(["bash", TRAIN, CONFIG], env={**env, **job, **variables}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("name", ["NPROC_PER_NODE", "MAX_RESTARTS", "SLURM_RESTART_COUNT", "SLURM_JOB_ID"])
def test_train_sbatch_refuses_a_non_integer_before_any_arithmetic(fake, name):
    tmp, env = fake
    marker = tmp / "MARKER"
    proc = train_sbatch(env, tmp, **{name: hostile(marker)})
    assert not marker.exists(), "the value ran a command"
    assert proc.returncode == 2 and name in proc.stderr, proc.stdout + proc.stderr


def test_train_sbatch_still_runs_with_integers(fake):
    tmp, env = fake
    proc = train_sbatch(env, tmp, NPROC_PER_NODE="2", MAX_RESTARTS="0", SLURM_RESTART_COUNT="3")
    assert proc.returncode == 0 and "training finished with status 0" in proc.stdout, proc.stdout + proc.stderr
