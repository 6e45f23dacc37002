"""hpc-dl lr-find: the learning-rate range test, with its plot and a suggested optim.lr."""

from pathlib import Path

from hpc_dl.cli.common import add_config_args


def add(sub) -> None:
    lf = sub.add_parser(
        "lr-find",
        help="learning-rate range test: the loss as the LR grows, and a suggested optim.lr",
        description="Build the model and data of CONFIG as `hpc-dl train` would, on one process, and train it "
        "for --steps steps with the learning rate growing exponentially from --start to --end, recording each "
        "step's loss (smoothed exponentially, beta 0.98); stop when the smoothed loss passes 4x its lowest. "
        "Suggest the LR where the smoothed loss falls fastest. Writes lr_find.png and lr_find.json; the model "
        "is thrown away.",
    )
    add_config_args(lf)
    lf.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep (default 100)")
    lf.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    lf.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    lf.add_argument("--out", help="folder for lr_find.png and lr_find.json (default: log.dir/lr_find-<data>-"
                    "<model>-<time>)")  # fmt: skip
    lf.set_defaults(func=cmd_lr_find)


def cmd_lr_find(args) -> int:
    from hpc_dl import config
    from hpc_dl.training import lr_find

    lr_find.check_range(args.steps, args.start, args.end)
    cfg = config.load(args.config, args.overrides)
    result = lr_find.find(cfg, args.steps, args.start, args.end)
    out = Path(args.out) if args.out else lr_find.default_out(cfg)
    files = lr_find.write(result, out)
    lr = result["suggestion"]
    print(f"suggested learning rate {lr:.2g} ({result['suggestion_method']}; lowest loss at "
          f"{result['min_loss_lr']:.2g}): train with optim.lr={lr:.2g}; wrote {files[1]}, {files[0]}")  # fmt: skip
    return 0
