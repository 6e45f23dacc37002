"""hpc-dl models: the model registry, or one model layer by layer."""

from hpc_dl.errors import UserError


def add(sub) -> None:
    m = sub.add_parser("models", help="list the models, or show one layer by layer", description="The model registry.")
    m.add_argument("--summary", metavar="NAME", help="per-layer table (output shape, parameters) of one model")
    m.add_argument("--input", metavar="C,H,W", help="input shape of one sample for --summary (default: the usual one)")
    m.add_argument("--classes", type=int, help="number of classes for --summary")
    m.add_argument("--small-input", action="store_true", help="torchvision models: the small-image stem")
    m.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from hpc_dl import models

    if not args.summary:
        rows = models.describe()
        print(f"{'name':<11} {'parameters':>12}  description (parameters at the model's usual input)")
        for name, params, about in rows:
            print(f"{name:<11} {params:>12,}  {about}")
        return 0
    if args.summary not in models.MODELS:
        close = ", ".join(models.MODELS)
        raise UserError(f"--summary {args.summary}: no such model; the models are {close}")
    entry = models.MODELS[args.summary]
    spec = entry.default_input
    if args.input:
        try:
            shape = tuple(int(v) for v in args.input.split(","))
        except ValueError:
            raise UserError(f"--input {args.input}: give the shape of one sample as integers, e.g. 3,32,32") from None
        spec = type(spec)(shape, args.classes or spec.num_classes, task=spec.task)
    elif args.classes:
        spec = type(spec)(spec.input_shape, args.classes, task=spec.task)
    cfg = models.default_config(args.summary)
    if args.small_input:
        cfg.small_input = True
    print(models.format_summary(args.summary, models.build(cfg, spec), spec))
    return 0
