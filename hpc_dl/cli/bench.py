"""hpc-dl bench gemm | allreduce | scaling | project."""

import shutil
from pathlib import Path

from hpc_dl.cli.common import CLASSES_HELP, add_config_args, ddp_job
from hpc_dl.errors import JobError, UserError


def add(sub) -> None:
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
    add_config_args(sc)
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
    add_config_args(pr)
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


def cmd_bench_allreduce(args) -> int:
    from hpc_dl.bench import collectives
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
    with ddp_job(args.timeout, args.device) as s:
        report = collectives.run(s, ops, low, high, args.dtype, args.iters, args.repeats, args.warmup)
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
    from hpc_dl.bench import project

    result, out = project.from_options(args)
    print(project.format_table(result))
    print(f"wrote {out}/projection.json, {out}/projection.png")
    return 0
