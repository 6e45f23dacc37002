"""hpc-dl train: one training run from a config."""

from pathlib import Path

from hpc_dl.cli.common import add_config_args


def add(sub) -> None:
    t = sub.add_parser("train", help="train a model", description="Train a model from a config.")
    add_config_args(t)
    t.add_argument("--run-dir", help="run directory (default: log.dir/<data>-<model>-<time or job id>)")
    t.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="auto: continue from the newest good checkpoint in the run directory, if any; "
        "PATH: a checkpoint file or a run directory",
    )
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from hpc_dl import config
    from hpc_dl.training.run import train

    path, overrides = args.config, args.overrides
    cfg = config.load(path, overrides)
    summary = train(cfg, run_dir=args.run_dir, resume=args.resume)
    if summary is None:  # not rank 0
        return 0
    test = summary["test"]
    if "rmse" in test:  # regression, in the target's units
        r2 = "-" if test.get("r2") is None else f"{test['r2']:.4f}"
        result = f"test RMSE {test['rmse']:.4g}, R^2 {r2}"
    else:
        result = f"test accuracy {test['accuracy']:.4f}"
    print(
        f"done: {result}, test loss {test['loss']:.4f} "
        f"({summary['steps']} steps, {summary['wall_time_s']:.1f} s)\n"
        f"results: {summary['run_dir']}/ ("
        + ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(Path(summary["run_dir"]).iterdir()))
        + ")"
    )
    return 0
