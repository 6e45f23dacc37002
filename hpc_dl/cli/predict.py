"""hpc-dl predict: classify CSV rows or image files with a trained model."""

import json
import sys

from hpc_dl.errors import UserError


def add(sub) -> None:
    pd = sub.add_parser(
        "predict",
        help="classify CSV rows or image files with a trained model",
        description="Top-k classes with probabilities for every row of the CSV files (a header names the "
        "feature columns) or every image file, from the run's exported program (exported first if needed). "
        "An image unlike the training images (inverted, little contrast) gets a warning on stderr.",
    )
    pd.add_argument("run_dir", help="a run directory written by hpc-dl train")
    pd.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV files (table models) or image files")
    pd.add_argument("--top-k", type=int, default=3, help="classes shown per input (default 3)")
    pd.add_argument("--json", action="store_true", help="one JSON object per input")
    pd.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from hpc_dl.course import predict

    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be at least 1")
    for row in predict.predict(args.run_dir, args.inputs, args.top_k):
        for warning in row["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['input']}: " + ", ".join(f"{c} {p:.4f}" for c, p in row["top"]))
    return 0
