"""``hpc-dl`` command line. Each subcommand is one function; a UserError becomes
``error: ...`` on stderr and exit code 2 (``--debug`` shows the traceback)."""

import argparse
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import hpc_dl
from hpc_dl.distributed.process_group import named_failures
from hpc_dl.errors import JobError, UserError
from hpc_dl.train.stop import EXIT_STOPPED, Stopped

EPILOG = """\
examples:
  hpc-dl train                                   embedded default: CNN on digits, CPU
  hpc-dl train configs/breast_cancer_mlp.yaml optim.lr=3e-3 train.steps=200
  hpc-dl train configs/digits_cnn.yaml --run-dir runs/mine --resume auto
  hpc-dl config configs/digits_cnn.yaml          print the resolved config
  hpc-dl models --summary lenet5                 one model, layer by layer
  hpc-dl info                                    versions, devices, Slurm variables
"""


CLASSES_HELP = "data.name=imagefolder without the data here: the number of classes (else its train/ folders)"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file or a shipped config's name (default: the embedded "
                   "default)")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4; they "
                   "may stand anywhere on the line")  # fmt: skip


OVERRIDE = re.compile(r"[A-Za-z_][\w.-]*=")


def _is_override(token: str) -> bool:
    return bool(OVERRIDE.match(token)) and not Path(token).is_file()  # a file named a=b.yaml is a config


def _config_and_overrides(args, leftovers: list[str]) -> None:
    """Overrides may stand anywhere on the line. argparse gives only the positionals before the first
    option to config/overrides and leaves the later ones over; here every key=value token is an
    override, in the order given, and the one other token is the config. Anything else is an error
    shown with the subcommand's usage."""
    here = args.command_parser
    unknown = [t for t in leftovers if t.startswith("-")]
    if unknown or (leftovers and not hasattr(args, "overrides")):
        here.error(f"unrecognized argument '{(unknown or leftovers)[0]}'")
    if not hasattr(args, "overrides"):
        return
    tokens = [t for t in (args.config, *args.overrides, *leftovers) if t is not None]
    others = [t for t in tokens if not _is_override(t)]
    if len(others) > 1:
        here.error(f"unrecognized argument '{others[1]}': give one CONFIG and key=value overrides")
    args.config, args.overrides = (others or [None])[0], [t for t in tokens if _is_override(t)]


def cmd_train(args) -> int:
    from hpc_dl import config
    from hpc_dl.train.run import train

    path, overrides = args.config, args.overrides
    cfg = config.load(path, overrides)
    summary = train(cfg, run_dir=args.run_dir, resume=args.resume)
    if summary is None:  # not rank 0
        return 0
    test = summary["test"]
    print(
        f"done: test accuracy {test['accuracy']:.4f}, test loss {test['loss']:.4f} "
        f"({summary['steps']} steps, {summary['wall_time_s']:.1f} s)\n"
        f"results: {summary['run_dir']}/ ("
        + ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(Path(summary["run_dir"]).iterdir()))
        + ")"
    )
    return 0


def cmd_submit(args) -> int:
    from hpc_dl.launch.submit import submit

    path, overrides = args.config, args.overrides
    flags = {k: getattr(args, k) for k in _slurm_flags()}
    return submit(path, overrides, flags, args.run_dir, local=args.local, dry_run=args.dry_run, wait=args.wait)


def _slurm_flags() -> dict:
    """One --flag per field of the config's slurm section: {name: (type, help)}; a list field's
    flag may be given several times."""
    import dataclasses
    import typing

    from hpc_dl.config import SlurmConfig

    hints = typing.get_type_hints(SlurmConfig)
    return {
        f.name: (next(t for t in (int, float, str) if t in (hints[f.name], *typing.get_args(hints[f.name]))),
                 f.metadata["help"].replace("%", "%%"))
        for f in dataclasses.fields(SlurmConfig)
    }  # fmt: skip


def cmd_config(args) -> int:
    from hpc_dl import config

    path, overrides = args.config, args.overrides
    print(config.to_yaml(config.load(path, overrides)), end="")
    return 0


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


def cmd_preflight(args) -> int:
    from hpc_dl import config
    from hpc_dl.distributed import preflight, strategy

    cfg = config.load(None, ["dist.strategy=ddp", f"dist.timeout_s={args.timeout}", f"train.device={args.device}"])
    s = strategy.build(cfg)  # check-in: a missing rank fails here, named
    try:
        with named_failures(s.group):
            report = preflight.run(s, megabytes=args.megabytes)
        if s.is_main:
            print(preflight.format_report(report))
    finally:
        s.close()
    return 0


def cmd_bench_allreduce(args) -> int:
    from hpc_dl import config
    from hpc_dl.bench import collectives
    from hpc_dl.distributed import strategy
    from hpc_dl.fileio import write_json

    ops = args.ops.split(",")
    unknown = [op for op in ops if op not in collectives.OPS]
    if unknown:
        raise UserError(f"--ops: unknown {', '.join(unknown)}; choose from {', '.join(collectives.OPS)}")
    try:
        low, high = collectives.parse_bytes(args.min_bytes), collectives.parse_bytes(args.max_bytes)
    except ValueError as e:
        raise UserError(f"--min-bytes/--max-bytes: {e}") from None
    if low > high:
        raise UserError(f"--min-bytes {args.min_bytes} is larger than --max-bytes {args.max_bytes}")
    cfg = config.load(None, ["dist.strategy=ddp", f"dist.timeout_s={args.timeout}", f"train.device={args.device}"])
    s = strategy.build(cfg)
    try:
        with named_failures(s.group):
            report = collectives.run(s, ops, low, high, args.dtype, args.iters, args.repeats, args.warmup)
    finally:
        s.close()
    if not s.is_main:
        return 0
    print(collectives.format_table(report))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "collectives.json", report)
        collectives.plot(report, out / "collectives.png")
        print(f"wrote {out}/collectives.json, {out}/collectives.png")
    if not report["all_correct"]:
        raise JobError("a collective returned wrong values (see the 'correct' column)")
    return 0


def cmd_consolidate(args) -> int:
    from pathlib import Path

    from hpc_dl.checkpoint.deepspeed import consolidate

    folder = Path(args.checkpoint)
    if (folder / "checkpoints").is_dir():  # a run directory: its latest checkpoint
        from hpc_dl.checkpoint import CheckpointDir

        folder = CheckpointDir(folder / "checkpoints", 1).latest() or folder
    if not folder.is_dir():
        raise UserError(f"{args.checkpoint}: not a DeepSpeed checkpoint folder or a run directory that holds one")
    out = Path(args.out or folder.parent.parent / "model_fp32.pt")
    consolidate(folder, out)
    print(f"wrote {out} (consolidated fp32 state dict of {folder})")
    return 0


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


def cmd_bench_gemm(args) -> int:
    from hpc_dl.bench import gemm
    from hpc_dl.distributed.strategy import select_device
    from hpc_dl.fileio import write_json

    device = select_device(args.device)
    dtypes = args.dtypes.split(",") if args.dtypes else (["bf16", "tf32"] if device.type == "cuda" else ["fp32"])
    unknown = [d for d in dtypes if d not in gemm.DTYPES]
    if unknown:
        raise UserError(f"--dtypes: unknown {', '.join(unknown)}; choose from {', '.join(gemm.DTYPES)}")
    result = gemm.run(device, dtypes, repeats=args.repeats)
    print(gemm.format_table(result))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def cmd_bench_scaling(args) -> int:
    import datetime

    from hpc_dl import config
    from hpc_dl.bench import scaling

    path, overrides = args.config, args.overrides
    points = scaling.parse_points(args.points, args.procs_per_node)
    if args.out:
        out = Path(args.out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(config.load(path, overrides).log.dir) / f"scaling-{args.mode}-{stamp}"
    if args.launcher == "slurm" and not shutil.which("sbatch"):
        raise UserError("--launcher slurm: no Slurm here (sbatch is not on PATH); --launcher local runs here")
    report = scaling.sweep(path, overrides, args.mode, points, out, args.launcher, args.global_batch, args.timeout_min)
    print(scaling.markdown(report))
    print(f"wrote {out}/scaling.json, scaling.csv, scaling.md, scaling.png")
    failed = [r["point"] for r in report["points"] if r["status"] != "ok"]
    if failed:
        raise JobError(f"{len(failed)} of {len(points)} point(s) did not complete: {', '.join(failed)} (see the table)")
    return 0


def cmd_bench_project(args) -> int:
    import datetime

    from hpc_dl import config, data
    from hpc_dl.bench import project, scaling
    from hpc_dl.fileio import write_json
    from hpc_dl.telemetry import flops, peaks

    if args.mfu is not None and not 0 < args.mfu <= 1:
        hint = f"; give {args.mfu / 100:.4g} for {args.mfu:g} %" if 1 < args.mfu <= 100 else ""
        raise UserError(f"--mfu {args.mfu:g}: MFU is a fraction in (0, 1]{hint}")
    measured = json.loads(Path(args.measured).read_text()) if args.measured else None
    path, overrides = args.config, args.overrides
    if measured and not path and not overrides:  # the sweep's own config
        path, overrides = measured["config"], measured["overrides"]
    cfg = config.load(path, overrides)
    spec = data.shape_spec(cfg.data, args.classes)
    per_sample = flops.count(cfg.model, spec, cfg.data.batch_size).per_sample
    params = flops.parameters_by_module(cfg.model, spec)[""]
    if measured:
        w = project.workload_from_sweep(measured, per_sample, params, args.bytes_per_grad)
    else:
        w = project.Workload(per_sample, cfg.data.batch_size * cfg.train.grad_accum, args.bytes_per_grad * params, 0)
    w.mode = args.mode or w.mode
    if args.global_batch:
        if w.mode != "strong":
            raise UserError("--global-batch is for --mode strong")
        w.batch_per_device, w.base_devices = args.global_batch, 1
    if args.tflops_per_device:
        w.tflops_per_device = args.tflops_per_device
    elif args.mfu:
        peak = args.peak_tflops or cfg.log.peak_tflops or peaks.peak_tflops(args.gpu, args.dtype)
        if not peak:
            raise UserError(f"--mfu needs a peak: --peak-tflops, or a --gpu from {', '.join(peaks.PEAKS)}")
        w.tflops_per_device = args.mfu * peak
    if not w.tflops_per_device:
        raise UserError("the achieved rate is unknown: give --mfu (with --gpu/--dtype) or --tflops-per-device, "
                        "or --measured with a sweep whose base point completed")  # fmt: skip
    if args.overlap == "measured":
        if not measured:
            raise UserError("--overlap measured needs --measured")
        w.overlap = project.measured_overlap(measured)
    else:
        w.overlap = float(args.overlap)
        if not 0 <= w.overlap <= 1:
            raise UserError(f"--overlap {args.overlap}: a fraction from 0 to 1, or 'measured'")
    procs = args.gpus_per_node
    if procs is None:
        used = {r["procs_per_node"] for r in measured["points"]} if measured else {8}
        procs = max(used)
    nodes = scaling.parse_points(args.nodes, procs)
    if not measured and not args.global_batch:  # strong: data.batch_size per device at the smallest point
        w.base_devices = nodes[0].devices
    intra, inter = project.parse_link(args.intra, args.gpu, procs), project.parse_link(args.inter)
    result = project.result(w, nodes, intra, inter, args.algorithm, measured["points"] if measured else [])
    print(project.format_table(result))
    out = Path(args.out or Path(cfg.log.dir) / f"projection-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "projection.json", result)
    project.plot(result, out / "projection.png")
    print(f"wrote {out}/projection.json, {out}/projection.png")
    return 0


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
    specs = [gd.parse_optimizer(o, args.lr) for o in args.optimizers.split(",")]
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


def cmd_explain(args) -> int:
    from hpc_dl.course import explain

    for name in ("samples", "background", "images", "top_k"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    files = explain.explain(args.run_dir, args.samples, args.background, args.method, args.images, args.top_k)
    print("wrote " + ", ".join(str(f) for f in files))
    if not args.no_wandb:
        explain.log_to_wandb(args.run_dir, files)
    return 0


def cmd_export(args) -> int:
    from hpc_dl.course import export

    files = export.export(args.run_dir, onnx=not args.no_onnx)
    print("wrote " + ", ".join(str(f) for f in files))
    if not args.no_onnx and not any(f.name == export.ONNX for f in files):
        print("(no model.onnx: torch's ONNX exporter needs onnxscript; pip install onnxscript)")
    return 0


def cmd_predict(args) -> int:
    from hpc_dl.course import predict

    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be at least 1")
    for row in predict.predict(args.run_dir, args.inputs, args.top_k):
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['input']}: " + ", ".join(f"{c} {p:.4f}" for c, p in row["top"]))
    return 0


def cmd_info(args) -> int:
    from hpc_dl.telemetry import manifest

    report = manifest.environment()
    print(json.dumps(report, indent=2) if args.json else manifest.format_report(report))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpc-dl",
        description="Distributed deep-learning training for Slurm clusters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hpc_dl {hpc_dl.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model", description="Train a model from a config.")
    _add_config_args(t)
    t.add_argument("--run-dir", help="run directory (default: log.dir/<data>-<model>-<time or job id>)")
    t.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="auto: continue from the newest good checkpoint in the run directory, if any; "
        "PATH: a checkpoint file or a run directory",
    )
    t.set_defaults(func=cmd_train)

    sb = sub.add_parser(
        "submit",
        help="submit training to Slurm with submitit",
        description="Submit the training as a Slurm job (submitit). Resources come from the config's slurm "
        "section; these flags win over it.",
    )
    _add_config_args(sb)
    from hpc_dl.config import SlurmConfig

    for name, (kind, text) in _slurm_flags().items():
        many = isinstance(getattr(SlurmConfig(), name), list)  # a list: the flag may be repeated
        sb.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, action="append" if many else "store",
                        help=f"{text} (slurm.{name}{'; repeat the flag for more' if many else ''})")  # fmt: skip
    sb.add_argument("--run-dir", help="run directory (default: log.dir/<data>-<model>-job<id>)")
    sb.add_argument("--wait", action="store_true", help="follow the job's log; exit with its status")
    sb.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting")
    sb.add_argument("--local", action="store_true", help="run through submitit's local executor (no Slurm)")
    sb.set_defaults(func=cmd_submit)

    c = sub.add_parser("config", help="print the resolved config", description="Validate and print a config.")
    _add_config_args(c)
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("models", help="list the models, or show one layer by layer", description="The model registry.")
    m.add_argument("--summary", metavar="NAME", help="per-layer table (output shape, parameters) of one model")
    m.add_argument("--input", metavar="C,H,W", help="input shape of one sample for --summary (default: the usual one)")
    m.add_argument("--classes", type=int, help="number of classes for --summary")
    m.add_argument("--small-input", action="store_true", help="torchvision models: the small-image stem")
    m.set_defaults(func=cmd_models)

    pf = sub.add_parser(
        "preflight",
        help="check every rank and an all-reduce (run under torchrun or srun)",
        description="Every rank checks in; an all-reduce is verified and timed. Exit 1 with a table on failure.",
    )
    pf.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all ranks (default 60)")
    pf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pf.add_argument("--megabytes", type=float, default=64.0, help="all-reduce size for the bandwidth figure")
    pf.set_defaults(func=cmd_preflight)

    co = sub.add_parser(
        "consolidate",
        help="write a DeepSpeed checkpoint as one fp32 state dict",
        description="Gather a (ZeRO-partitioned) DeepSpeed checkpoint into one fp32 state dict for inference.",
    )
    co.add_argument("checkpoint", help="a checkpoints/step_N folder, or a run directory (its latest checkpoint)")
    co.add_argument("--out", help="output file (default: <run dir>/model_fp32.pt)")
    co.set_defaults(func=cmd_consolidate)

    fl = sub.add_parser("flops", help="FLOPs of one training step, per module", description="Count model FLOPs "
                        "from the shapes; the data need not be here.")  # fmt: skip
    _add_config_args(fl)
    fl.add_argument("--classes", type=int, help=CLASSES_HELP)
    fl.set_defaults(func=cmd_flops)

    bench = sub.add_parser("bench", help="microbenchmarks").add_subparsers(dest="bench", metavar="BENCH", required=True)
    gm = bench.add_parser("gemm", help="matmul TFLOP/s per dtype and size", description="Matmul throughput.")
    gm.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    gm.add_argument(
        "--dtypes", help="comma-separated: bf16, fp16, tf32, fp32 (default: bf16,tf32 on GPUs, fp32 on CPUs)"
    )
    gm.add_argument("--repeats", type=int, default=10)
    gm.add_argument("--out", help="write the results as JSON here")
    gm.set_defaults(func=cmd_bench_gemm)

    ar = bench.add_parser(
        "allreduce",
        help="all-reduce/all-gather/reduce-scatter bandwidth (run under torchrun or srun)",
        description="Time collectives over power-of-two sizes on the current world; algbw and busbw as in "
        "nccl-tests; every result is checked. Run it under torchrun or srun (alone: a world of one).",
    )
    ar.add_argument("--ops", default=",".join(("all_reduce", "all_gather", "reduce_scatter")), help="comma-separated")
    ar.add_argument("--min-bytes", default="8", help="smallest message, e.g. 8, 1K (default 8)")
    ar.add_argument("--max-bytes", default="64M", help="largest message, e.g. 64M, 1G (default 64M)")
    ar.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ar.add_argument("--iters", type=int, help="back-to-back operations per timing (default: 20, fewer for big ones)")
    ar.add_argument("--repeats", type=int, default=5, help="timings per size; the median is reported")
    ar.add_argument("--warmup", type=int, default=3)
    ar.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ar.add_argument("--timeout", type=float, default=300.0, help="seconds before a missing rank is reported")
    ar.add_argument("--out", help="folder for collectives.json and collectives.png")
    ar.set_defaults(func=cmd_bench_allreduce)

    sc = bench.add_parser(
        "scaling",
        help="weak or strong scaling sweep: one training run per point, report + plot",
        description="Train the config at each point (nodes x processes per node), locally with torchrun or as "
        "Slurm jobs (submitit; resources from the config's slurm section), and report throughput, MFU, the "
        "step-time breakdown, all-reduce bandwidth, speed-up and efficiency against the smallest point.",
    )
    _add_config_args(sc)
    sc.add_argument("--mode", choices=["weak", "strong"], required=True, help="weak: fixed batch per device; "
                    "strong: fixed global batch")  # fmt: skip
    sc.add_argument("--points", required=True, help="NODESxPROCS list, e.g. 1x1,1x2 or 1x4,2x4,4x4")
    sc.add_argument("--procs-per-node", type=int, help="for --points given as node counts only (1,2,4)")
    sc.add_argument("--launcher", choices=["local", "slurm"], default="local")
    sc.add_argument("--global-batch", type=int, help="strong: the fixed global batch (default: data.batch_size x "
                    "the smallest point's devices)")  # fmt: skip
    sc.add_argument("--timeout-min", type=float, help="per point: local wall-clock limit / Slurm time limit")
    sc.add_argument("--out", help="sweep folder (default: log.dir/scaling-<mode>-<time>); its name is the W&B group")
    sc.set_defaults(func=cmd_bench_scaling)

    pr = bench.add_parser(
        "project",
        help="predict step time and efficiency at larger scale (cost model)",
        description="Project data-parallel step time and efficiency to many nodes: compute from the model's "
        "FLOPs and the achieved rate, a hierarchical ring/tree all-reduce of the gradients, and overlap with "
        "backward. --measured overlays a sweep's points and takes its base point's rate.",
    )
    _add_config_args(pr)
    pr.add_argument("--measured", help="scaling.json of a sweep: overlay its points; its config and base rate")
    pr.add_argument("--nodes", default=",".join(str(2**i) for i in range(11)), help="node counts (default 1..1024)")
    pr.add_argument("--gpus-per-node", type=int, help="devices per node (default 8, or the sweep's)")
    pr.add_argument("--mfu", type=float, help="MFU as a fraction in (0, 1], e.g. 0.4, with the peak of --gpu/--dtype")
    pr.add_argument("--gpu", default="H100 SXM", help="GPU model for the peak (default H100 SXM)")
    pr.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "tf32", "fp32"])
    pr.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device, instead of --gpu")
    pr.add_argument("--tflops-per-device", type=float, help="achieved TFLOP/s per device, instead of --mfu")
    pr.add_argument("--intra", default="nvlink", help="intra-node link: nvlink, GBPS:US, or a collectives.json")
    pr.add_argument("--inter", default="ndr", help="inter-node link per device: ndr, hdr, tcp, GBPS:US, or a "
                    "collectives.json")  # fmt: skip
    pr.add_argument("--algorithm", choices=["ring", "tree", "auto"], default="auto")
    pr.add_argument("--overlap", default="0", help="fraction of the all-reduce hidden by backward, or 'measured'")
    pr.add_argument("--mode", choices=["weak", "strong"], help="default: the sweep's, else weak")
    pr.add_argument("--global-batch", type=int, help="strong: the fixed global batch")
    pr.add_argument("--bytes-per-grad", type=int, default=4, help="bytes per gradient element (fp32: 4)")
    pr.add_argument("--classes", type=int, help=CLASSES_HELP)
    pr.add_argument("--out", help="folder for projection.json and projection.png (default: log.dir/projection-<time>)")
    pr.set_defaults(func=cmd_bench_project)

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
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate where NAME@LR does not give one")
    g.add_argument("--start", help="x,y (default: the surface's own)")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--out", default=".", help="folder for gd_<function>.png and .json (default: here)")
    g.set_defaults(func=cmd_demo_gd)

    xp = sub.add_parser(
        "explain",
        help="SHAP explanations of a trained model's predictions",
        description="Write RUN_DIR/explain/: for table models, SHAP values of the class probabilities per "
        "feature (permutation or kernel explainer) with beeswarm and bar plots; for image models, expected "
        "gradients (GradientExplainer) for each image's top classes, as overlays. Logged to the run's W&B run.",
    )
    xp.add_argument("run_dir", help="a run directory written by hpc-dl train")
    xp.add_argument("--samples", type=int, default=100, help="table rows of the test split explained (default 100)")
    xp.add_argument("--background", type=int, default=100, help="training samples standing for 'unknown' (100)")
    xp.add_argument("--method", choices=["permutation", "kernel"], default="permutation", help="tables only")
    xp.add_argument("--images", type=int, default=4, help="test images explained (default 4)")
    xp.add_argument("--top-k", type=int, default=3, help="classes explained per image (default 3)")
    xp.add_argument("--no-wandb", action="store_true", help="do not add the plots to the run's W&B run")
    xp.set_defaults(func=cmd_explain)

    ex = sub.add_parser(
        "export",
        help="write a trained model as an inference program (torch.export, ONNX)",
        description="Write RUN_DIR/export/: model.pt2 (torch.export; raw input -> class probabilities, "
        "preprocessing inside), model.onnx when onnxscript is installed, and predictor.json.",
    )
    ex.add_argument("run_dir", help="a run directory written by hpc-dl train")
    ex.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    ex.set_defaults(func=cmd_export)

    pd = sub.add_parser(
        "predict",
        help="classify CSV rows or image files with a trained model",
        description="Top-k classes with probabilities for every row of the CSV files (a header names the "
        "feature columns) or every image file, from the run's exported program (exported first if needed).",
    )
    pd.add_argument("run_dir", help="a run directory written by hpc-dl train")
    pd.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV files (table models) or image files")
    pd.add_argument("--top-k", type=int, default=3, help="classes shown per input (default 3)")
    pd.add_argument("--json", action="store_true", help="one JSON object per input")
    pd.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="print the environment report", description="Versions, devices, Slurm.")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)
    for choices in (sub.choices, bench.choices, demo.choices):  # errors show the subcommand's own usage
        for command in choices.values():
            command.set_defaults(command_parser=command)
    return p


def _exit_after_distributed(code: int) -> int:
    """After a run in a process group, end the process at once: native threads of gloo,
    NCCL or DeepSpeed can abort the interpreter's teardown ("terminate called without an
    active exception") and turn a finished job into a failed one. Files are closed and the
    group destroyed by then; only the streams need flushing."""
    dist_env = sys.modules.get("hpc_dl.distributed.process_group")
    if dist_env is None or not dist_env.FORMED:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _say(message: str) -> None:
    """One write per line: every rank of a job may say this at once into the same log, and
    print() under PYTHONUNBUFFERED (as Slurm jobs often run) writes text and newline apart."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args, leftovers = p.parse_known_args(argv)
    if not args.command:  # `hpc-dl` alone: show what it can do
        if leftovers:
            p.error(f"unrecognized argument '{leftovers[0]}'")
        p.print_help()
        return 0
    _config_and_overrides(args, leftovers)
    try:
        code = args.func(args)
    except (UserError, JobError) as e:
        if args.debug:
            traceback.print_exc()
        _say(f"error: {e}")
        code = 2 if isinstance(e, UserError) else 1
    except Stopped as e:  # a signal (pre-emption, time limit): checkpointed, to be resumed
        _say(f"{e}: continue with --resume auto")
        code = EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `hpc-dl models | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    return _exit_after_distributed(code)
