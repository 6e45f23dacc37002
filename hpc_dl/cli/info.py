"""hpc-dl info: the environment report."""

import json


def add(sub) -> None:
    i = sub.add_parser("info", help="print the environment report", description="Versions, devices, Slurm.")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from hpc_dl.telemetry import manifest

    report = manifest.environment()
    print(json.dumps(report, indent=2) if args.json else manifest.format_report(report))
    return 0
