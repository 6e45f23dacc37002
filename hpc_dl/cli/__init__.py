"""``hpc-dl`` command line: one module per command (``add`` declares its arguments, the
function it sets runs it), imported here without torch; a command imports what it needs when
it runs. A UserError becomes ``error: ...`` on stderr and exit code 2 (``--debug`` shows the
traceback), a JobError exit code 1."""

import argparse
import os
import re
import sys
import traceback
from pathlib import Path

import hpc_dl
from hpc_dl.cli import (
    bench,
    config,
    consolidate,
    demo,
    diagnose,
    explain,
    export,
    features,
    flops,
    info,
    lr_find,
    models,
    predict,
    preflight,
    report,
    submit,
    train,
)
from hpc_dl.errors import JobError, UserError
from hpc_dl.training.stop import EXIT_STOPPED, Stopped

COMMANDS = [train, submit, config, models, preflight, diagnose, report, consolidate, flops, lr_find, bench, demo,
            explain, features, export, predict, info]  # fmt: skip

EPILOG = """\
examples:
  hpc-dl train                                   embedded default: CNN on digits, CPU
  hpc-dl train configs/breast_cancer_mlp.yaml optim.lr=3e-3 train.steps=200
  hpc-dl train configs/digits_cnn.yaml --run-dir runs/mine --resume auto
  hpc-dl config configs/digits_cnn.yaml          print the resolved config
  hpc-dl models --summary lenet5                 one model, layer by layer
  hpc-dl info                                    versions, devices, Slurm variables
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpc-dl",
        description="Distributed deep-learning training for Slurm clusters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hpc_dl {hpc_dl.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    _own_usage(p)
    return p


def _own_usage(p: argparse.ArgumentParser) -> None:
    """Errors show the subcommand's own usage: every (nested) subcommand knows its parser."""
    for action in p._subparsers._group_actions if p._subparsers else []:
        for command in action.choices.values():
            command.set_defaults(command_parser=command)
            _own_usage(command)


OVERRIDE = re.compile(r"[A-Za-z_][\w.-]*=")


def _is_override(token: str) -> bool:
    return bool(OVERRIDE.match(token)) and not Path(token).is_file()  # a file named a=b.yaml is a config


def _config_and_overrides(args, leftovers: list[str]) -> None:
    """Overrides may stand anywhere on the line. argparse gives only the positionals before the first
    option to config/overrides and leaves the later ones over; here every key=value token is an
    override, in the order given, and the one other token is the config. Anything else is an error
    shown with the subcommand's usage."""
    here = args.command_parser
    unknown = [t for t in leftovers if t.startswith("-")]
    if unknown or (leftovers and not hasattr(args, "overrides")):
        here.error(f"unrecognized argument '{(unknown or leftovers)[0]}'")
    if not hasattr(args, "overrides"):
        return
    tokens = [t for t in (args.config, *args.overrides, *leftovers) if t is not None]
    others = [t for t in tokens if not _is_override(t)]
    if len(others) > 1:
        here.error(f"unrecognized argument '{others[1]}': give one CONFIG and key=value overrides")
    args.config, args.overrides = (others or [None])[0], [t for t in tokens if _is_override(t)]


def _exit_after_distributed(code: int) -> int:
    """After a run in a process group, end the process at once: native threads of gloo,
    NCCL or DeepSpeed can abort the interpreter's teardown ("terminate called without an
    active exception") and turn a finished job into a failed one. Files are closed and the
    group destroyed by then; only the streams need flushing."""
    dist_env = sys.modules.get("hpc_dl.distributed.process_group")
    if dist_env is None or not dist_env.FORMED:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _say(message: str) -> None:
    """One write per line: every rank of a job may say this at once into the same log, and
    print() under PYTHONUNBUFFERED (as Slurm jobs often run) writes text and newline apart."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


NUMBERS = re.compile(r"-[\d.][\d.e+-]*(,-?[\d.][\d.e+-]*)+")  # -1,0.01: argparse takes it for an option


def _negative_values(argv: list[str]) -> list[str]:
    """``--start -1,0.01`` as ``--start=-1,0.01``: argparse reads a token that starts with '-' as an
    option unless it is one plain negative number."""
    out = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and NUMBERS.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _negative_values(sys.argv[1:] if argv is None else argv)
    p = parser()
    args, leftovers = p.parse_known_args(argv)
    if not args.command:  # `hpc-dl` alone: show what it can do
        if leftovers:
            p.error(f"unrecognized argument '{leftovers[0]}'")
        p.print_help()
        return 0
    _config_and_overrides(args, leftovers)
    try:
        code = args.func(args)
    except (UserError, JobError) as e:
        if args.debug:
            traceback.print_exc()
        _say(f"error: {e}")
        code = 2 if isinstance(e, UserError) else 1
    except Stopped as e:  # a signal (pre-emption, time limit): checkpointed, to be resumed
        _say(f"{e}: continue with --resume auto")
        code = EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `hpc-dl models | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    return _exit_after_distributed(code)
