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
def named_failures(group):
    """hpc_dl.distributed.process_group.named_failures, imported (with torch) only when used."""
    from hpc_dl.distributed.process_group import named_failures as names

    with names(group):
        yield
