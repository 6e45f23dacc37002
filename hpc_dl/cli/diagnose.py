"""hpc-dl diagnose: the collective a distributed run stopped in, from the traces its ranks left."""

from pathlib import Path

from hpc_dl.errors import UserError


def add(sub) -> None:
    di = sub.add_parser(
        "diagnose",
        help="which rank and collective a hung or failed distributed run stopped at",
        description="Read the flight-recorder dumps a distributed run left in RUN_DIR/hang (written when a "
        "collective timed out, a rank was named as gone, or no step completed for half of dist.timeout_s) and "
        "say in one line: the collective (operation, sequence number, sizes), the ranks with their hosts that "
        "never entered it or left no trace, a mismatch, and the last completed step.",
    )
    di.add_argument("run_dir", help="the run directory (or its hang/ folder)")
    di.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    from hpc_dl.distributed import hang

    folder = Path(args.run_dir)
    if (folder / hang.FOLDER).is_dir():
        folder = folder / hang.FOLDER
    try:
        dumps = hang.read(folder) if folder.is_dir() else {}
    except ValueError as e:
        raise UserError(str(e)) from None
    if not dumps:
        raise UserError(
            f"{args.run_dir}: no hang dumps (rank<N>.json in {hang.FOLDER}/): the run did not stop in a collective, "
            "or every rank was killed before it could write one"
        )
    print(hang.analyse(dumps))
    return 0
