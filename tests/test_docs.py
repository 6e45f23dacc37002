"""The documents are executed (issue 14).

Every command in the fenced shell blocks (```sh, ```bash, ```console, and unlabelled blocks whose lines
start with `$ `) of README.md, slurm/README.md, containers/README.md and benchmarks/README.md runs as the
document types it, in a temporary working directory laid out like a checkout (slurm/, configs/, .venv,
Makefile) with the data the documents assume. Backslash continuations are joined; blank and comment lines
are skipped; the lines after a `$ ` command are its expected output (`...` stands for any text, numbers
may differ). Each command is one test, `test_command[<file>:<line>]`, run in document order; a command
whose output an earlier one needs runs that earlier one first if it has not run yet.

What may differ from the text is in TABLE, one entry per change with its reason: data paths and sizes
substituted or appended, the test cluster's hardware, environment variables, the files prepared, and how
each kind of command runs (on this machine, on the two-node Slurm test cluster, or checked but not run).
A command that no `run` entry matches fails. A command line ending in `# GPU` (see README's Tests section)
is marked `gpu`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import resource
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ("README.md", "slurm/README.md", "containers/README.md", "benchmarks/README.md")
SHELL_LABELS = {"sh", "bash", "console", "shell"}
VENV_BIN = ROOT / ".venv" / "bin"


# ------------------------------------------------------------------------------------------ the table
@dataclasses.dataclass(frozen=True)
class Rule:
    """kind: `run` (how the command runs: the first matching `run` rule decides), `sub` (re.sub of match by
    value in the command), `append` (value added at the end), `env` (variables set), `prepare` (a file made
    in the workspace first), `once` (a Slurm job given twice runs once), `mark` (a pytest marker).
    match: a regex searched in the command as typed (for `sub`: what is replaced); when: a regex the command
    must also match. `{ws}` in a value is the working directory."""

    kind: str
    match: str
    value: object
    why: str
    when: str | None = None


SLURM_JOB = r"^(\w+=\S+ )*sbatch "
NOT_DRY = r"^(?!.*--dry-run)"
TRAIN = r"^(hpc-dl|python -m hpc_dl|torchrun .*-m hpc_dl|srun .*-m hpc_dl) train\b|slurm/train\.sbatch"

# fmt: off
TABLE = [
    # How a command runs. The first `run` rule whose match fits decides.
    Rule("run", r"^hpc-dl\b.*(\[[A-Za-z-]|\s\.\.\.\s*(#.*)?$)", "synopsis",
         "a usage line ([optional] parts, A|B choices, ...): not runnable as typed; the subcommand and every "
         "--flag it shows must exist in hpc-dl's parser"),
    Rule("run", r"^make test\b", "make -n",
         "excluded: `make test` is this test suite (recursion); `make -n test` checks that the target exists and "
         "runs the linter and pytest"),
    Rule("run", r"^(apptainer|singularity) ", "apptainer",
         "no Apptainer runtime can be installed on CI (no Debian package, nothing on PyPI): bash -n, the "
         "subcommand and its options are apptainer 1.x's, and the files it reads exist"),
    Rule("run", r"^srun ", "salloc",
         "an srun line runs inside an allocation: `salloc --nodes=1 --ntasks-per-node=2` on the test cluster"),
    Rule("run", SLURM_JOB + r"|^slurm/scaling\.sh |^hpc-dl submit (?!.*--dry-run)|--launcher slurm", "slurm",
         "needs Slurm: runs on the two-node test cluster (tests/slurm/cluster.py); submitted jobs are waited for "
         "and must complete"),
    Rule("run", r"runs/scaling-weak-", "slurm",
         "reads the weak sweep that the `--launcher slurm` command before it writes (so it runs with it)"),
    Rule("run", r"^(python -m pip|\S*/pip|python -m venv) ", "options",
         "not run: `pip wheel` of hpc_dl's dependencies downloads torch and its CUDA libraries (gigabytes), and "
         "`python -m venv .venv` in the working folder would replace the checkout's venv; bash -n, and every option "
         "is one of `pip <command> --help` / `python -m venv --help`. tests/test_wheelhouse.py runs these steps "
         "with hpc_dl's wheel and the pure-Python dependencies"),
    Rule("run", r"^(make demo|hpc-dl|\.venv/bin/hpc-dl|python -m hpc_dl|torchrun .*-m hpc_dl|wandb sync)\b", "local",
         "runs on this machine's CPUs, as typed"),
    # Sizes and the test cluster's hardware.
    Rule("sub", r"train\.epochs=30\b", "train.steps=2", "size: 2 steps, not 30 epochs"),
    Rule("sub", r"train\.steps=(100|300)\b", "train.steps=2", "size: 2 steps"),
    Rule("append", TRAIN, "train.steps=2 optim.warmup_steps=0 log.plots=false",
         "size: every training run takes 2 steps, so no warm-up (a config's 10-2500 warm-up steps must be fewer "
         "than the run's), no plots; nothing is added where the document shows an error"),
    Rule("append", r"cifar10_resnet18", "data.batch_size=8", "size: the generated CIFAR folder is small"),
    Rule("append", r"imagenet_resnet50", "data.image_size=64 data.batch_size=4 data.eval_batch_size=4",
         "size: ResNet-50 at 64x64 (its smallest input), batches of 4"),
    Rule("sub", r"--nodes([= ])4\b", r"--nodes\g<1>2", "size: the test cluster has two nodes", when=NOT_DRY),
    Rule("sub", r"--gpus-per-node([= ])4\b", r"--gpus-per-node\g<1>0",
         "hardware: the test nodes' GPUs are stand-ins without CUDA, so one CPU process per node", when=NOT_DRY),
    Rule("sub", SLURM_JOB + r"(?!.*--(gpus-per-node|gres))", r"\g<0>--gpus-per-node=0 ",
         "hardware: train.sbatch's H100 default (4 GPUs per node) does not fit a test node (2 stand-in GPUs, no "
         "CUDA): one CPU process per node; options on the sbatch line win over its #SBATCH lines"),
    Rule("sub", SLURM_JOB + r"(?!.*--cpus-per-task)", r"\g<0>--cpus-per-task=2 ",
         "hardware: train.sbatch's default of 32 CPUs per task does not fit a test node (2 CPUs)"),
    Rule("sub", r"--gres=gpu:4\b", "--gres=gpu:2", "hardware: a test node has 2 (stand-in) GPUs"),
    Rule("sub", r"--cpus-per-task=16\b", "--cpus-per-task=2", "hardware: a test node has 2 CPUs"),
    Rule("sub", r'"1 2 4 8"', '"1 2"', "size: the test cluster has two nodes"),
    Rule("env", r"^slurm/scaling\.sh ", {"GPUS_PER_NODE": "0", "SBATCH_ARGS": "--cpus-per-task=2"},
         "hardware, through the script's own variables: CPU nodes of 2 CPUs"),
    Rule("sub", r"--ntasks-per-node=4\b", "--ntasks-per-node=2", "hardware: a test node has 2 CPUs"),
    Rule("sub", r"--nproc_per_node=8\b", "--nproc_per_node=2", "hardware: 2 CPU processes (gloo) on 2 cores"),
    Rule("sub", r"--max-bytes 1G\b", "--max-bytes 1M", "size: messages up to 1 MiB"),
    Rule("sub", r"--points 1x8,2x8,4x8\b", "--points 1x1,2x1", "size: two test nodes, one CPU process each"),
    # Data paths and the documents' placeholders.
    Rule("sub", r"(?<=train )CONFIG\b", "configs/X.yaml", "the placeholder for your config: configs/X.yaml"),
    Rule("prepare", r"configs/X\.yaml", "x_config",
         "configs/X.yaml, the documents' own placeholder for your config: a 20-step MLP on breast cancer with "
         "DDP, and the test nodes' resources in its slurm section (1 CPU per task, 15 minutes)"),
    Rule("prepare", r"cifar10_", "cifar",
         "data/cifar-10-batches-py (the CIFAR configs' data.root): generated, official format, 40 images a batch"),
    Rule("env", r"\$SCRATCH\b", {"SCRATCH": "{ws}/scratch"}, "$SCRATCH: a folder of the working directory"),
    Rule("prepare", r"\$SCRATCH/flowers\b", "flowers",
         "$SCRATCH/flowers: a generated ImageFolder tree (2 classes, 6 train and 3 val images each)"),
    Rule("sub", r"\$HOME/", "{ws}/home/", "data paths in your home: home/ in the working directory"),
    Rule("prepare", r"resnet50-11ad3fa6\.pth", "resnet50_weights",
         "torchvision's ResNet-50 weights file: the same names and shapes, randomly initialised (nothing is "
         "downloaded)"),
    Rule("prepare", r"/juwels\.sh\b", "site_file",
         "juwels.sh, a site file for train.sbatch: `export HPC_DL_MASTER_SUFFIX=i` (the test nodes answer to "
         "<host>i, as JUWELS's do)"),
    Rule("prepare", r"\bruns/bc\b", "bc_run",
         "runs/bc, the run the predict example assumes: configs/breast_cancer_mlp.yaml trained for 30 steps"),
    Rule("prepare", r"\bpatients\.csv\b", "patients_csv", "patients.csv: one malignant row of the data set"),
    Rule("prepare", r"\bmissing\.csv\b", "missing_csv", "missing.csv: that row without its 'mean radius' column"),
    Rule("sub", r"runs/scaling-weak-\.\.\.", "runs/scaling-weak-*",
         "the folder of the weak sweep above (its name has the time)"),
    Rule("sub", r"runs/<run>", "runs/a", "the run `--run-dir runs/a` above made, with W&B offline"),
    Rule("env", r"--run-dir runs/a\b", {"WANDB_MODE": "offline"},
         "the run whose W&B folder `wandb sync` reads: offline, as on a compute node (the rest: disabled)"),
    Rule("sub", r"^wandb sync ", "wandb sync --dry-run ",
         "never uploads (no network in CI): wandb 0.31's --dry-run says what it would sync"),
    Rule("prepare", r"hpc_dl\.sif", "container",
         "no Apptainer here: an empty hpc_dl.sif, and on PATH a stand-in `apptainer` that checks the template's "
         "`exec` options against apptainer's and that the image and bound folders exist, then runs the command "
         "on the node without a container"),
    Rule("once", SLURM_JOB, None,
         "a Slurm job that two documents give alike (README.md, slurm/README.md) runs once; both tests check it"),
    Rule("mark", r"#\s*GPU\s*$", "gpu", "only makes sense on a GPU: runs where CUDA is (pytest -m gpu)"),
]
# fmt: on

# Every command: tests never log to W&B (WANDB_MODE=disabled unless a rule says offline) and never see an
# API key or W&B service of this process; .venv/bin is first on PATH (`hpc-dl`, `torchrun`, `python`).
SECRET_VARS = ("WANDB_API_KEY", "WANDB_SERVICE", "WANDB_BASE_URL", "HF_TOKEN")


# ------------------------------------------------------------------------------------------ parsing
@dataclasses.dataclass
class Block:
    doc: str
    line: int  # of the opening fence
    label: str
    heading: str
    lines: list[tuple[int, str]]

    @property
    def is_shell(self) -> bool:
        return self.label in SHELL_LABELS or (not self.label and any(t.startswith("$ ") for _, t in self.lines))


@dataclasses.dataclass
class Command:
    doc: str
    line: int
    typed: str  # as the document has it, continuations joined
    expected: list[str]  # the output shown after a `$ ` command
    block: Block

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    found, heading, current = [], "", None
    for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        if current is None:
            if line.lstrip().startswith("```"):
                current = Block(doc, n, line.strip()[3:].strip(), heading, [])
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.lstrip().startswith("```"):
            found.append(current)
            current = None
        else:
            current.lines.append((n, line))
    assert current is None, f"{doc}:{current.line}: the fenced block is not closed"
    return found


def commands(block: Block) -> list[Command]:
    prompt = any(t.startswith("$ ") for _, t in block.lines)
    out: list[Command] = []
    lines = iter(block.lines)
    for n, text in lines:
        if prompt and not text.startswith("$ "):
            if text.strip() and out:
                out[-1].expected.append(text.strip())
            continue
        text = text[2:] if prompt else text
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        while text.rstrip().endswith("\\"):
            text = text.rstrip()[:-1].rstrip() + " " + next(lines)[1].strip()
        out.append(Command(block.doc, n, text.strip(), [], block))
    return out


ALL = [c for doc in DOCS for b in blocks(doc) if b.is_shell for c in commands(b)]


def rules(cmd: Command, kind: str) -> list[Rule]:
    return [r for r in TABLE if r.kind == kind and re.search(r.match, cmd.typed) and
            (r.when is None or re.search(r.when, cmd.typed))]  # fmt: skip


def runner(cmd: Command) -> str | None:
    found = rules(cmd, "run")
    return found[0].value if found else None


def resolve(cmd: Command, ws: Path) -> tuple[str, dict]:
    """The command as it runs here, and its environment (TABLE's substitutions applied in order)."""
    text = cmd.typed
    for r in TABLE:
        if r.kind == "sub" and (r.when is None or re.search(r.when, cmd.typed)):
            text = re.sub(r.match, str(r.value).replace("{ws}", str(ws)), text)
    tail = [r.value for r in rules(cmd, "append")] if not _shows_error(cmd) else []
    if tail:  # before a trailing comment
        body, hash_, comment = text.partition(" #")
        text = " ".join([body.rstrip(), *tail]) + (f"  #{comment}" if hash_ else "")
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env |= {"PATH": f"{ws / 'bin'}:{VENV_BIN}:{os.environ['PATH']}", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    for r in rules(cmd, "env"):
        env |= {k: v.replace("{ws}", str(ws)) for k, v in r.value.items()}
    return text, env


def _shows_error(cmd: Command) -> bool:
    """The document shows this command failing ("one line on stderr and exit code 2"): it runs as typed."""
    return bool(cmd.expected) and cmd.expected[0].startswith("error:")


def marks(cmd: Command) -> list:
    how = runner(cmd)
    out = [getattr(pytest.mark, r.value) for r in rules(cmd, "mark")]
    checked = how in ("synopsis", "make -n", "apptainer", "options", None)
    quick = checked or "--dry-run" in cmd.typed or _shows_error(cmd)
    if not quick:
        out.append(pytest.mark.slow)
    if how in ("slurm", "salloc"):
        out.append(pytest.mark.slurm)
    return out


# ------------------------------------------------------------------------------------------ the workspace
class Workspace:
    """A temporary folder laid out like a checkout, shared by all documents' commands (run in order)."""

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict] = {}  # Command.id -> what running it gave
        self.jobs: dict[str, dict] = {}  # a Slurm command as it ran -> its result (`once`)
        self.prepared: set[str] = set()
        for name in ("slurm", "containers", "Makefile", ".venv"):
            (path / name).symlink_to(ROOT / name)
        for name in ("pyproject.toml", "constraints.txt"):  # older than .venv's install stamp: make installs nothing
            shutil.copy(ROOT / name, path / name)
            os.utime(path / name, (0, 0))
        (path / "configs").mkdir()
        for f in sorted((ROOT / "configs").glob("*.yaml")):
            (path / "configs" / f.name).symlink_to(f)
        (path / "bin").mkdir()

    def prepare(self, cmd: Command) -> None:
        for r in rules(cmd, "prepare"):
            if r.value not in self.prepared:
                getattr(self, f"_prepare_{r.value}")()
                self.prepared.add(r.value)

    def _prepare_x_config(self) -> None:
        (self.path / "configs" / "X.yaml").write_text(X_CONFIG)

    def _prepare_cifar(self) -> None:
        from tests.data.test_files import write_cifar10

        write_cifar10(self.path / "data")

    def _prepare_flowers(self) -> None:
        from tests.data.test_files import write_image_tree

        write_image_tree(self.path / "scratch" / "flowers", classes=("daisy", "rose"))

    def _prepare_resnet50_weights(self) -> None:
        import torch
        import torchvision

        (self.path / "home" / "weights").mkdir(parents=True)
        weights = self.path / "home" / "weights" / "resnet50-11ad3fa6.pth"
        torch.save(torchvision.models.resnet50().state_dict(), weights)

    def _prepare_site_file(self) -> None:
        (self.path / "home").mkdir(exist_ok=True)
        (self.path / "home" / "juwels.sh").write_text("export HPC_DL_MASTER_SUFFIX=i\n")

    def _prepare_bc_run(self) -> None:
        from tests.conftest import run_cli

        run_cli("train", "configs/breast_cancer_mlp.yaml", "--run-dir", "runs/bc", "train.steps=30", "log.plots=false",
                cwd=self.path)  # fmt: skip

    def _patient(self, drop: str | None = None) -> tuple[list[str], list[float]]:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        row = data.data[list(data.target).index(0)]  # the first malignant case
        names = list(data.feature_names)
        keep = [i for i, name in enumerate(names) if name != drop]
        return [names[i] for i in keep], [float(row[i]) for i in keep]

    def _write_csv(self, name: str, header: list[str], row: list[float]) -> None:
        with open(self.path / name, "w", newline="") as f:
            csv.writer(f).writerows([header, row])

    def _prepare_patients_csv(self) -> None:
        self._write_csv("patients.csv", *self._patient())

    def _prepare_missing_csv(self) -> None:
        self._write_csv("missing.csv", *self._patient(drop="mean radius"))

    def _prepare_container(self) -> None:
        (self.path / "hpc_dl.sif").touch()
        stand_in = self.path / "bin" / "apptainer"
        stand_in.write_text(apptainer_stand_in())
        stand_in.chmod(0o755)


X_CONFIG = """\
# configs/X.yaml: the documents' placeholder for your config (tests/test_docs.py writes it).
model:
  name: mlp
  hidden: [16]
data:
  name: breast_cancer
  batch_size: 32
optim:
  name: adamw
  lr: 3.0e-3
train:
  steps: 20
  eval_every: 0
log:
  every: 5
  plots: false
dist:
  strategy: ddp
slurm:
  cpus_per_task: 1
  time_min: 15
"""


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"))


# ------------------------------------------------------------------------------------------ running
def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _shell(text: str, ws: Path, env: dict, timeout: float) -> dict:
    start, cpu = time.monotonic(), _cpu()
    proc = subprocess.run(["bash", "-c", text], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "ran": text,
            "seconds": round(time.monotonic() - start, 1), "cpu_seconds": round(_cpu() - cpu, 1)}  # fmt: skip


def run(cmd: Command, ws: Workspace, request) -> dict:
    """Run the command (once), after the earlier commands of its block that it may need."""
    if cmd.id in ws.results:
        return ws.results[cmd.id]
    how = runner(cmd)
    if how in ("slurm", "salloc"):
        request.getfixturevalue("slurm")
    may_run = {"local"} | ({"slurm", "salloc"} if how in ("slurm", "salloc") else set())
    block = [c for c in ALL if c.block is cmd.block]
    for earlier in block[: block.index(cmd)]:
        if earlier.id not in ws.results and runner(earlier) in may_run:
            run(earlier, ws, request)
    ws.prepare(cmd)
    text, env = resolve(cmd, ws.path)
    if how == "local":
        result = _shell(text, ws.path, env, timeout=600)
    elif how == "salloc":
        alloc = "salloc --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=15 "
        result = _shell(alloc + text, ws.path, env, timeout=600)
    elif how == "slurm":
        once, key = rules(cmd, "once"), text.split(" #")[0].strip()
        if once and key in ws.jobs:
            result = ws.jobs[key]
        else:
            start = time.monotonic()
            result = _shell(text, ws.path, env, timeout=900)
            result["jobs"] = _wait_for_jobs(result, ws.path)
            result["seconds"] = round(time.monotonic() - start, 1)  # with the wait for its jobs
            if once:
                ws.jobs[key] = result
    else:
        raise AssertionError(f"{cmd.id}: {how} commands are checked, not run")
    ws.results[cmd.id] = result
    return result


def _wait_for_jobs(result: dict, ws: Path) -> dict[str, tuple[str, str]]:
    """Jobs an sbatch or slurm/scaling.sh command submitted: their end state and log."""
    from tests.slurm.jobs import ENDED, wait_for

    if result["rc"] != 0:
        return {}
    jobs = re.findall(r"Submitted batch job (\d+)", result["stdout"])
    jobs += re.findall(r"^\d+ (\d+)$", result["stdout"], re.M)  # slurm/scaling.sh: "NODES JOB" lines
    out = {}
    for job in jobs:
        try:
            state = wait_for(job, ENDED, timeout=600)
        except AssertionError as e:
            state = str(e)
        logs = sorted(ws.glob(f"slurm-*{job}.out"))
        out[job] = (state, "".join(p.read_text() for p in logs) if logs else "(no log)")
    return out


def _pattern(expected: str) -> re.Pattern:
    """An expected output line as a regex: `...` is any text, a decimal number any decimal number."""
    parts = re.split(r"(\.\.\.|\d+\.\d+)", expected)
    regex = "".join(".*" if p == "..." else r"\d+\.\d+" if re.fullmatch(r"\d+\.\d+", p) else re.escape(p)
                    for p in parts)  # fmt: skip
    return re.compile(regex)


def check(cmd: Command, result: dict) -> None:
    said = f"{cmd.id}: `{result['ran']}` exited {result['rc']}\n{result['stdout'][-3000:]}\n{result['stderr'][-3000:]}"
    if _shows_error(cmd):  # "one line on stderr and exit code 2"
        assert result["rc"] == 2, said
        got = [line for line in result["stderr"].splitlines() if line.strip()]
    else:
        assert result["rc"] == 0, said
        got = [line for line in result["stdout"].splitlines() if line.strip()]
    if cmd.expected:
        assert len(got) == len(cmd.expected), f"expected {len(cmd.expected)} line(s) of output\n{said}"
        for want, line in zip(cmd.expected, got):
            assert _pattern(want).fullmatch(line), f"expected {want!r}, got {line!r}\n{said}"
    for job, (state, log) in result.get("jobs", {}).items():
        assert state == "COMPLETED", f"{cmd.id}: job {job} ended {state}\n{said}\n{log[-4000:]}"
        if "train.sbatch" in result["ran"] or "scaling.sh" in result["ran"]:
            assert "training finished with status 0" in log, log[-4000:]
        if "CONTAINER=" in result["ran"]:
            assert "apptainer stand-in: exec" in log, log[-4000:]


# ------------------------------------------------------------------------------------------ checks without running
def check_synopsis(cmd: Command) -> None:
    """A usage line of `hpc-dl`: its subcommand and every --flag it shows exist."""
    import argparse

    from hpc_dl.cli import parser

    p = parser()
    words = cmd.typed.split("#")[0].split()[1:]
    for word in words:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        p = subs[0].choices[word]
    options = {s for a in p._actions for s in a.option_strings}
    shown = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", cmd.typed.split(" #")[0]))
    assert shown <= options, f"{cmd.id}: {p.prog} has no {sorted(shown - options)} (it has {sorted(options)})"


# apptainer 1.x options (`apptainer <command> --help`, https://apptainer.org/docs/user/main/cli.html):
# those that take a value, and flags.
_ACTION_VALUE = {"--add-caps", "--app", "--apply-cgroups", "--authfile", "-B", "--bind", "--cpus", "--dns",
                 "--drop-caps", "--env", "--env-file", "--fusemount", "-H", "--home", "--hostname", "--memory",
                 "--mount", "--network", "--network-args", "-o", "--overlay", "--pwd", "-S", "--scratch",
                 "--security", "-W", "--workdir"}  # fmt: skip
_ACTION_FLAGS = {"--allow-setuid", "-e", "--cleanenv", "--compat", "-c", "--contain", "-C", "--containall",
                 "--disable-cache", "-f", "--fakeroot", "-i", "--ipc", "--keep-privs", "-n", "--net", "--no-home",
                 "--no-init", "--no-privs", "--no-umask", "--nv", "--nvccli", "-p", "--pid", "--rocm", "-u",
                 "--userns", "--uts", "-w", "--writable", "--writable-tmpfs"}  # fmt: skip
APPTAINER = {
    "exec": (_ACTION_VALUE, _ACTION_FLAGS, 2),  # IMAGE COMMAND [ARGS]
    "run": (_ACTION_VALUE, _ACTION_FLAGS, 1),
    "shell": (_ACTION_VALUE, _ACTION_FLAGS, 1),
    "test": (_ACTION_VALUE, _ACTION_FLAGS, 1),
    "build": ({"--arch", "--authfile", "--bind", "--build-arg", "--build-arg-file", "--docker-host", "--library",
               "--mount", "--passphrase", "--pem-path", "--section"},
              {"--disable-cache", "-e", "--encrypt", "-f", "--fakeroot", "--fix-perms", "-F", "--force",
               "--ignore-fakeroot-command", "--ignore-subuid", "--json", "-T", "--notest", "--nv", "--nvccli",
               "--rocm", "-s", "--sandbox", "-u", "--update", "--userns", "--warn-unused-build-args",
               "--writable-tmpfs"}, 2),  # IMAGE DEFINITION
}  # fmt: skip
DEF_SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help",
                "arguments", "appinstall", "appenv", "apphelp", "applabels", "appfiles", "apprun",
                "apptest"}  # fmt: skip


def check_apptainer(cmd: Command, ws: Path) -> None:
    syntax = subprocess.run(["bash", "-n", "-c", cmd.typed], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{cmd.id}: {syntax.stderr}"
    words = shlex.split(cmd.typed, comments=True)
    sub = words[1]
    assert sub in APPTAINER, f"{cmd.id}: `{words[0]} {sub}` is not an apptainer command this test knows"
    takes_value, flags, positional = APPTAINER[sub]
    rest, args = words[2:], []
    while rest:
        word = rest.pop(0)
        name = word.split("=", 1)[0]
        if args or not word.startswith("-"):
            args.append(word)
        elif name in takes_value:
            assert "=" in word or rest, f"{cmd.id}: {word} needs a value"
            if "=" not in word:
                rest.pop(0)
        else:
            assert name in flags, f"{cmd.id}: apptainer {sub} has no option {word}"
    assert len(args) >= positional, f"{cmd.id}: apptainer {sub} needs {positional} argument(s), got {args}"
    mentioned = re.findall(r"(?<![\w-])--[a-z][\w-]*", cmd.typed.partition("#")[2])  # "# --fakeroot if ..."
    assert set(mentioned) <= takes_value | flags, f"{cmd.id}: apptainer {sub} has no {mentioned}"
    if sub == "build":  # the definition file it builds: a Bootstrap header, only real sections
        recipe = (ws / args[1]).read_text()
        assert re.search(r"^Bootstrap:\s*\S+", recipe, re.M), args[1]
        sections = set(re.findall(r"^%(\w+)", recipe, re.M))
        assert sections <= DEF_SECTIONS, f"{args[1]}: not apptainer sections: {sections - DEF_SECTIONS}"


def check_options(cmd: Command) -> None:
    """A pip or venv command: valid bash, and every option it gives is in the tool's --help."""
    syntax = subprocess.run(["bash", "-n", "-c", cmd.typed], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{cmd.id}: {syntax.stderr}"
    words = shlex.split(cmd.typed, comments=True)
    python = [str(VENV_BIN / "python")]
    if words[:3] == ["python", "-m", "venv"]:
        tool, rest = [*python, "-m", "venv"], words[3:]
    else:
        rest = words[3:] if words[:3] == ["python", "-m", "pip"] else words[1:]
        tool, rest = [*python, "-m", "pip", rest[0]], rest[1:]
    shown = subprocess.run([*tool, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, f"{cmd.id}: {' '.join(tool)} --help: {shown.stderr}"
    options = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", shown.stdout))
    given = {w.split("=", 1)[0] for w in rest if w.startswith("-")}
    assert given <= options, f"{cmd.id}: {' '.join(tool[2:])} has no {sorted(given - options)}"


def apptainer_stand_in() -> str:
    """A bash `apptainer` for the test cluster: `exec` with apptainer's options only, an existing image and
    bound folders; then the command runs on the node (the image's Python is the project's .venv)."""
    value = "|".join(sorted(_ACTION_VALUE))
    flags = "|".join(sorted(_ACTION_FLAGS))
    return f"""#!/bin/bash
set -euo pipefail
say() {{ echo "apptainer stand-in: $*" >&2; }}
[ "${{1:-}}" = exec ] || {{ say "only exec is expected, got '${{1:-}}'"; exit 64; }}
shift
ARGS=("$@")
WORKDIR=
while [ $# -gt 0 ]; do
    case $1 in
        {flags}) shift ;;
        {value})
            [ $# -ge 2 ] || {{ say "$1 needs a value"; exit 64; }}
            if [ "$1" = --bind ] || [ "$1" = -B ]; then
                IFS=, read -r -a PATHS <<< "$2"
                for P in "${{PATHS[@]}}"; do [ -e "${{P%%:*}}" ] || {{ say "bind: no $P"; exit 64; }}; done
            fi
            [ "$1" != --pwd ] || WORKDIR=$2
            shift 2 ;;
        -*) say "apptainer exec has no option $1"; exit 64 ;;
        *) break ;;
    esac
done
[ -f "${{1:-}}" ] || {{ say "no image '${{1:-}}'"; exit 64; }}
say "exec ${{ARGS[*]}}"
shift
[ -z "$WORKDIR" ] || cd "$WORKDIR"
export PATH="{VENV_BIN}:$PATH"
exec "$@"
"""


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.id, marks=marks(c)) for c in ALL])
def test_command(cmd: Command, workspace: Workspace, request):
    how = runner(cmd)
    assert how, (f"{cmd.id}: no rule in tests/test_docs.py's TABLE runs `{cmd.typed}`; add a `run` rule (or "
                 "fix the document)")  # fmt: skip
    if how == "synopsis":
        check_synopsis(cmd)
    elif how == "apptainer":
        check_apptainer(cmd, workspace.path)
    elif how == "options":
        check_options(cmd)
    elif how == "make -n":
        text, env = resolve(cmd, workspace.path)
        made = _shell(text.replace("make ", "make -n ", 1), workspace.path, env, timeout=60)
        assert made["rc"] == 0 and "ruff check" in made["stdout"] and "pytest" in made["stdout"], made
    else:
        result = run(cmd, workspace, request)
        request.node.user_properties += [("seconds", result["seconds"]), ("cpu_seconds", result["cpu_seconds"])]
        check(cmd, result)


def test_every_block_is_labelled():
    """A command in an unlabelled block without `$ ` prompts would never run here: every block says what it is."""
    loose = [f"{b.doc}:{b.line}" for doc in DOCS for b in blocks(doc) if not b.label and not b.is_shell]
    assert not loose, f"label these blocks ```sh if they hold commands, ```text otherwise: {loose}"


def test_every_rule_is_used():
    """A rule no command needs any more is stale: the table lists only what the documents need (the `# GPU`
    convention stays while no line uses it)."""
    unused = [r for r in TABLE if r.kind != "mark" and not any(r in rules(c, r.kind) for c in ALL)]
    assert not unused, unused


def test_the_documents_have_commands():
    assert {c.doc for c in ALL} >= {"README.md", "slurm/README.md", "containers/README.md"}
    assert len(ALL) > 30
