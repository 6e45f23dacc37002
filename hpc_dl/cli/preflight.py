"""hpc-dl preflight: every rank checks in, an all-reduce is verified and timed, and each node's
matmul rate, host-to-device copy (GPUs) and links are compared with the other nodes'."""

import argparse

from hpc_dl.cli.common import ddp_job


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def add(sub) -> None:
    pf = sub.add_parser(
        "preflight",
        help="check every rank, an all-reduce and each node's speed (run under torchrun or srun)",
        description="Every rank checks in; an all-reduce is verified and timed; each rank times a matmul (and "
        "on GPUs a host-to-device copy) and, with several hosts, each node pair an all-reduce. Exit 1 with a table "
        "if a rank is missing or an all-reduce is wrong; a slow node is a warning with an sbatch --exclude line.",
    )
    pf.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all ranks (default 60)")
    pf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pf.add_argument("--megabytes", type=float, default=64.0, help="all-reduce size for the bandwidth figures")
    # Defaults None: preflight's own, as before training (importing them here would import torch).
    pf.add_argument(
        "--matmul-seconds",
        type=float,
        help="how long each rank times its matmul (longer: steadier; default: as before training)",
    )
    pf.add_argument("--margin", type=_fraction, help="name a node or rank slower than the others' median by this "
                    "fraction (0: off; default: as before training)")  # fmt: skip
    pf.set_defaults(func=cmd_preflight)


def cmd_preflight(args) -> int:
    from hpc_dl.distributed import preflight

    with ddp_job(args.timeout, args.device) as s:
        report = preflight.run(s, megabytes=args.megabytes,
                               matmul_seconds=args.matmul_seconds or preflight.MATMUL_SECONDS)  # fmt: skip
        if s.is_main:
            margin = preflight.MARGIN if args.margin is None else args.margin
            print(preflight.format_report(report, margin))  # outliers warn: a slow node still trains
    return 0
