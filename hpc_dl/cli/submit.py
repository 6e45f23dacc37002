"""hpc-dl submit: the training as a Slurm job through submitit (no torch imported here)."""

from hpc_dl.cli.common import add_config_args


def add(sub) -> None:
    sb = sub.add_parser(
        "submit",
        help="submit training to Slurm with submitit",
        description="Submit the training as a Slurm job (submitit). Resources come from the config's slurm "
        "section; these flags win over it.",
    )
    add_config_args(sb)
    from hpc_dl.config import SlurmConfig

    for name, (kind, text) in _slurm_flags().items():
        many = isinstance(getattr(SlurmConfig(), name), list)  # a list: the flag may be repeated
        sb.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, action="append" if many else "store",
                        help=f"{text} (slurm.{name}{'; repeat the flag for more' if many else ''})")  # fmt: skip
    sb.add_argument("--run-dir", help="run directory (default: log.dir/<data>-<model>-job<id>)")
    sb.add_argument("--wait", action="store_true", help="follow the job's log; exit with its status")
    sb.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting")
    sb.add_argument("--local", action="store_true", help="run through submitit's local executor (no Slurm)")
    sb.set_defaults(func=cmd_submit)


def cmd_submit(args) -> int:
    from hpc_dl.launch.submit import submit

    path, overrides = args.config, args.overrides
    flags = {k: getattr(args, k) for k in _slurm_flags()}
    return submit(path, overrides, flags, args.run_dir, local=args.local, dry_run=args.dry_run, wait=args.wait)


def _slurm_flags() -> dict:
    """One --flag per field of the config's slurm section: {name: (type, help)}; a list field's
    flag may be given several times."""
    import dataclasses
    import typing

    from hpc_dl.config import SlurmConfig

    hints = typing.get_type_hints(SlurmConfig)
    return {
        f.name: (next(t for t in (int, float, str) if t in (hints[f.name], *typing.get_args(hints[f.name]))),
                 f.metadata["help"].replace("%", "%%"))
        for f in dataclasses.fields(SlurmConfig)
    }  # fmt: skip
