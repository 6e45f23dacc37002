"""What several commands share. Nothing here imports torch: `hpc-dl --help`, `config` and
`submit --dry-run` stay fast on a login node's shared file system."""

import argparse
import contextlib

CLASSES_HELP = "data.name=imagefolder without the data here: the number of classes (else its train/ folders)"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file or a shipped config's name (default: the embedded "
                   "default)")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4; they "
                   "may stand anywhere on the line")  # fmt: skip


@contextlib.contextmanager
def ddp_job(timeout_s: float, device: str):
    """The process group of a command run under torchrun or srun (preflight, bench allreduce): the
    time-out covers the check-in and every collective, a failure names the missing ranks, and the
    group is closed on the way out."""
    from hpc_dl import config
    from hpc_dl.distributed import strategy
    from hpc_dl.distributed.process_group import named_failures

    overrides = ["dist.strategy=ddp", f"dist.timeout_s={timeout_s}", f"dist.startup_timeout_s={timeout_s}",
                 f"train.device={device}"]  # fmt: skip
    s = strategy.build(config.load(None, overrides))  # check-in: a missing rank fails here, named
    try:
        with named_failures(s.group):
            yield s
    finally:
        s.close()
