"""hpc-dl flops: FLOPs of one training step, per module, from the shapes."""

from hpc_dl.cli.common import CLASSES_HELP, add_config_args


def add(sub) -> None:
    fl = sub.add_parser("flops", help="FLOPs of one training step, per module", description="Count model FLOPs "
                        "from the shapes; the data need not be here.")  # fmt: skip
    add_config_args(fl)
    fl.add_argument("--classes", type=int, help=CLASSES_HELP)
    fl.set_defaults(func=cmd_flops)


def cmd_flops(args) -> int:
    from hpc_dl import config, data
    from hpc_dl.telemetry import flops

    path, overrides = args.config, args.overrides
    cfg = config.load(path, overrides)
    spec = data.shape_spec(cfg.data, args.classes)
    counted = flops.count(cfg.model, spec, cfg.data.batch_size)
    print(flops.format_table(cfg.model.name, counted, flops.parameters_by_module(cfg.model, spec), cfg.log.peak_tflops))
    if cfg.model.name == "gpt":
        analytic = flops.gpt_analytic(cfg.model, spec, cfg.data.batch_size)
        print(f"analytic 6*N*tokens + 12*L*T*d*tokens: {analytic / 1e9:.4f} GFLOP "
              f"({analytic / counted.total - 1:+.2%} vs counted; MFU uses the counted figure)")  # fmt: skip
    return 0
