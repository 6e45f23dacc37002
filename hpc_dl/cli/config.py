"""hpc-dl config: validate and print the resolved config (no torch imported)."""

from hpc_dl.cli.common import add_config_args


def add(sub) -> None:
    c = sub.add_parser("config", help="print the resolved config", description="Validate and print a config.")
    add_config_args(c)
    c.set_defaults(func=cmd_config)


def cmd_config(args) -> int:
    from hpc_dl import config

    path, overrides = args.config, args.overrides
    print(config.to_yaml(config.load(path, overrides)), end="")
    return 0
