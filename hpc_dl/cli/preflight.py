"""hpc-dl preflight: every rank checks in, an all-reduce is verified and timed."""

from hpc_dl.cli.common import named_failures


def add(sub) -> None:
    pf = sub.add_parser(
        "preflight",
        help="check every rank and an all-reduce (run under torchrun or srun)",
        description="Every rank checks in; an all-reduce is verified and timed. Exit 1 with a table on failure.",
    )
    pf.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all ranks (default 60)")
    pf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pf.add_argument("--megabytes", type=float, default=64.0, help="all-reduce size for the bandwidth figure")
    pf.set_defaults(func=cmd_preflight)


def cmd_preflight(args) -> int:
    from hpc_dl import config
    from hpc_dl.distributed import preflight, strategy

    cfg = config.load(
        None,
        [
            "dist.strategy=ddp",
            f"dist.timeout_s={args.timeout}",
            f"dist.startup_timeout_s={args.timeout}",
            f"train.device={args.device}",
        ],
    )
    s = strategy.build(cfg)  # check-in: a missing rank fails here, named
    try:
        with named_failures(s.group):
            report = preflight.run(s, megabytes=args.megabytes)
        if s.is_main:
            print(preflight.format_report(report))
    finally:
        s.close()
    return 0
