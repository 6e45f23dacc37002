"""hpc-dl explain: SHAP explanations of a trained model."""

from hpc_dl.errors import UserError


def add(sub) -> None:
    xp = sub.add_parser(
        "explain",
        help="SHAP explanations of a trained model's predictions",
        description="Write RUN_DIR/explain/: for table models, SHAP values of the class probabilities per "
        "feature (permutation or kernel explainer) with beeswarm and bar plots; for image models, expected "
        "gradients (GradientExplainer) for each image's top classes, as overlays (a binary model: its one logit, "
        "that of the second class). Logged to the run's W&B run.",
    )
    xp.add_argument("run_dir", help="a run directory written by hpc-dl train")
    xp.add_argument("--samples", type=int, default=100, help="table rows of the test split explained (default 100)")
    xp.add_argument("--background", type=int, default=100, help="training samples standing for 'unknown' (100)")
    xp.add_argument("--method", choices=["permutation", "kernel"], default="permutation", help="tables only")
    xp.add_argument("--images", type=int, default=4, help="test images explained (default 4)")
    xp.add_argument("--top-k", type=int, default=3, help="classes explained per image (default 3)")
    xp.add_argument("--class", dest="chosen", metavar="NAME",
                    help="explain this class only (default: tables every class, or the second of two; "
                    "images each one's top-k, or a binary model's one logit)")  # fmt: skip
    xp.add_argument("--no-wandb", action="store_true", help="do not add the plots to the run's W&B run")
    xp.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from hpc_dl.course import explain

    for name in ("samples", "background", "images", "top_k"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    files = explain.explain(args.run_dir, args.samples, args.background, args.method, args.images, args.top_k,
                            chosen=args.chosen)  # fmt: skip
    print("wrote " + ", ".join(str(f) for f in files))
    if not args.no_wandb:
        explain.log_to_wandb(args.run_dir, files)
    return 0
