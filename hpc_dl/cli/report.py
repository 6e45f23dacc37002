"""hpc-dl report: one self-contained HTML page about a run (hpc_dl/telemetry/report.py)."""

from pathlib import Path

from hpc_dl.errors import UserError


def add(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="write one self-contained HTML page about a run (plots inline, no network needed)",
        description="Write RUN_DIR/report.html: the config and key facts, the run's segments and restarts, "
        "throughput, MFU and loss, the step-time breakdown, per-rank and per-node tables, stragglers, failures "
        "and the hang diagnosis. Plots are inline PNGs and the page loads nothing from the network: copy it "
        "anywhere and open it in a browser. Prints the path written.",
    )
    rp.add_argument("run_dir", help="a run directory written by hpc-dl train")
    rp.add_argument("--out", metavar="PATH", help="where to write the page (default: RUN_DIR/report.html)")
    rp.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from hpc_dl.fileio import write_text
    from hpc_dl.telemetry import report

    run_dir = Path(args.run_dir)
    page = report.build(run_dir, diagnosis=_diagnosis(run_dir))
    out = Path(args.out) if args.out else run_dir / report.FILE
    try:
        write_text(out, page)
    except OSError as e:
        raise UserError(f"cannot write the report to {out} ({e.strerror or e})") from None
    print(out)
    return 0


def _diagnosis(run_dir: Path) -> str | None:
    """What `hpc-dl diagnose` says about RUN_DIR/hang, or why the dumps cannot be read (the page
    shows it instead of failing); None when there are no dumps."""
    from hpc_dl.distributed import hang

    folder = run_dir / hang.FOLDER
    try:
        dumps = hang.read(folder) if folder.is_dir() else {}
        return hang.analyse(dumps) if dumps else None
    except (ValueError, KeyError, TypeError) as e:  # read names the file; analyse may meet a dump missing a key
        return str(e) if isinstance(e, ValueError) else f"{folder}: a dump lacks what the analysis needs ({e!r})"
