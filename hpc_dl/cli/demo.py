"""hpc-dl demo gd: optimizers on a 2-D loss surface."""

from pathlib import Path

from hpc_dl.errors import UserError


def add(sub) -> None:
    demo = sub.add_parser("demo", help="teaching demos").add_subparsers(dest="demo", metavar="DEMO", required=True)
    g = demo.add_parser(
        "gd",
        help="optimizers on a 2-D loss surface, with a contour plot",
        description="Gradient-descent playground: optimizers from the registry on a quadratic bowl, the "
        "Rosenbrock function or a saddle; prints where each ends, plots the trajectories.",
    )
    g.add_argument("--function", choices=["quadratic", "rosenbrock", "saddle"], default="rosenbrock")
    g.add_argument("--optimizers", default="sgd,momentum,adam", help="NAME or NAME@LR, comma-separated: "
                   "sgd, momentum, nesterov, adam, adamw")  # fmt: skip
    g.add_argument("--lr", type=float, help="learning rate where NAME@LR does not give one (default: each "
                   "optimizer's best on that surface)")  # fmt: skip
    g.add_argument("--start", help="x,y (default: the surface's own), e.g. --start -1,0.01")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--out", default=".", help="folder for gd_<function>.png and .json (default: here)")
    g.set_defaults(func=cmd_demo_gd)


def cmd_demo_gd(args) -> int:
    from hpc_dl.course import gd
    from hpc_dl.fileio import write_json

    surface = gd.SURFACES[args.function]
    try:
        start = tuple(float(v) for v in args.start.split(",")) if args.start else surface.start
    except ValueError:
        raise UserError(f"--start {args.start}: two numbers, x,y (e.g. -1.5,2)") from None
    if len(start) != 2:
        raise UserError(f"--start {args.start}: two numbers, x,y (e.g. -1.5,2)")
    specs = [gd.parse_optimizer(o, args.lr, surface.name) for o in args.optimizers.split(",")]
    runs = [gd.descend(surface, name, lr, start, args.steps) for name, lr in specs]
    target = "saddle point" if surface.name == "saddle" else "minimum"
    print(f"{surface.name} from {start}, {args.steps} steps; {target} at {surface.minimum}")
    print(f"{'optimizer':<10} {'lr':>8} {'final x':>11} {'final y':>11} {'loss':>11} {'to ' + target:>16}")
    for r in runs:
        x, y = r["final"]
        note = f"  diverged after {r['steps']} steps" if r["diverged"] else ""
        print(f"{r['optimizer']:<10} {r['lr']:>8g} {x:>11.5g} {y:>11.5g} {r['loss']:>11.4g} "
              f"{r['distance_to_minimum']:>16.4g}{note}")  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"gd_{surface.name}.json", {"surface": surface.name, "runs": runs})
        gd.plot(surface, runs, out / f"gd_{surface.name}.png")
        print(f"wrote {out}/gd_{surface.name}.json, {out}/gd_{surface.name}.png")
    return 0
