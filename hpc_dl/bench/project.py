"""Projection: step time and scaling efficiency of data-parallel training at node counts
beyond the machines at hand, from a cost model whose inputs are measured where they can be.

Per device and optimizer step (every device holds a full replica; D = nodes x g devices):

  compute  C = F * b / R        F: model FLOPs per sample (forward + backward, counted),
                                b: samples per device per step, R: achieved FLOP/s per
                                device (MFU x peak, or measured at a sweep's base point)
  comm     A = ring(G, g, intra) + allreduce(G / g, nodes, inter)
           G: gradient bytes. Hierarchical all-reduce: a ring reduce-scatter and
           all-gather within the node; between nodes each of the g devices all-reduces
           its 1/g share over its own NIC. With a link of bus bandwidth B and latency a:
             ring(S, n) = 2 (n - 1) a + 2 (n - 1) / n * S / B
             tree(S, n) = 2 ceil(log2 n) a + 2 S / B        (pipelined binary trees)
             auto       = the cheaper of the two, as NCCL chooses per size
  overlap  hidden = min(f * A, 2/3 * C)   f: the fraction of the all-reduce that runs
           behind backward (stated, or estimated from measured points); backward is
           about 2/3 of the compute, and no more than that can hide it
  step     T = C + A - hidden,  throughput X = b * D / T

Bandwidths are bus bandwidths (nccl-tests' busbw): the link figure the ring formula
stands for, so `hpc-dl bench allreduce` results drop straight in. Weak scaling keeps b
fixed; strong scaling keeps the global batch b * D fixed. Efficiency is defined as for a
measured sweep (hpc_dl.bench.scaling), against the smallest point.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_dl.bench.scaling import Point, speedup_efficiency
from hpc_dl.errors import UserError
from hpc_dl.telemetry.peaks import gpu_model

BACKWARD_SHARE = 2 / 3  # backward is about twice the forward's FLOPs


@dataclass(frozen=True)
class Link:
    busbw_gbs: float  # GB/s
    latency_us: float
    source: str = "stated"


# Published figures (see ../shared field notes and NVIDIA/nccl-tests reports); latencies are
# the per-step software + wire latency, rough: measure your own with `hpc-dl bench allreduce`.
LINKS = {
    "nvlink": Link(370.0, 2.0, "8x H100 SXM NVLink 4, NCCL ring all-reduce busbw ~370 GB/s"),
    "ndr": Link(46.0, 5.0, "InfiniBand NDR 400 Gb/s, one NIC per GPU, NCCL busbw ~46-48 GB/s"),
    "hdr": Link(23.0, 5.0, "InfiniBand HDR 200 Gb/s, one NIC per GPU, ~23 GB/s"),
    "tcp": Link(5.0, 30.0, "NCCL over TCP sockets (IB libraries missing), ~5 GB/s"),
}


# Within a node the figures depend on the GPU: its NVLink generation and NCCL's ring all-reduce busbw
# on 8 of them (DGX reports); `nvlink` picks the row of --gpu (a telemetry.peaks row).
NVLINK = {"H100 SXM": (4, 370.0), "H200": (4, 370.0), "A100": (3, 230.0)}


def nvlink(gpu: str, per_node: int) -> Link:
    """The `nvlink` preset for ``per_node`` GPUs of model ``gpu``, labelled with both."""
    row = gpu_model(gpu)
    if row not in NVLINK:
        base = LINKS["nvlink"]
        return Link(base.busbw_gbs, base.latency_us, f"{per_node}x {gpu}: no NVLink figures for '{gpu}', those "
                    "of H100 SXM NVLink 4 assumed; measure yours with `hpc-dl bench allreduce`")  # fmt: skip
    generation, busbw = NVLINK[row]
    return Link(busbw, 2.0, f"{per_node}x {gpu}, NVLink {generation}, NCCL ring all-reduce busbw ~{busbw:g} GB/s")


def ring_s(size: float, n: int, link: Link) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * link.latency_us * 1e-6 + 2 * (n - 1) / n * size / (link.busbw_gbs * 1e9)


def tree_s(size: float, n: int, link: Link) -> float:
    if n <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(n)) * link.latency_us * 1e-6 + 2 * size / (link.busbw_gbs * 1e9)


ALGORITHMS = {
    "ring": ring_s,
    "tree": tree_s,
    "auto": lambda size, n, link: min(ring_s(size, n, link), tree_s(size, n, link)),
}


def allreduce_s(size: float, nodes: int, per_node: int, intra: Link, inter: Link, algorithm: str = "auto") -> float:
    """Seconds for a hierarchical all-reduce of ``size`` bytes on nodes x per_node devices."""
    return ring_s(size, per_node, intra) + ALGORITHMS[algorithm](size / per_node, nodes, inter)


@dataclass
class Workload:
    flops_per_sample: float
    batch_per_device: float  # weak: at every point; strong: at the base point
    grad_bytes: float
    tflops_per_device: float  # achieved: MFU x peak
    overlap: float = 0.0
    mode: str = "weak"
    base_devices: int = 1  # strong scaling: global batch = batch_per_device x base_devices


def predict(w: Workload, point: Point, intra: Link, inter: Link, algorithm: str = "auto") -> dict:
    d = point.devices
    b = w.batch_per_device if w.mode == "weak" else w.batch_per_device * w.base_devices / d
    compute = w.flops_per_sample * b / (w.tflops_per_device * 1e12)
    comm = allreduce_s(w.grad_bytes, point.nodes, point.procs, intra, inter, algorithm)
    hidden = min(w.overlap * comm, BACKWARD_SHARE * compute)
    step = compute + comm - hidden
    return {"point": point.label, "nodes": point.nodes, "procs_per_node": point.procs, "devices": d,
            "batch_per_device": b, "compute_s": compute, "comm_s": comm, "hidden_s": hidden,
            "exposed_comm_s": comm - hidden, "step_s": step, "samples_per_s": b * d / step}  # fmt: skip


def project(w: Workload, points: list[Point], intra: Link, inter: Link, algorithm: str = "auto") -> list[dict]:
    rows = [predict(w, p, intra, inter, algorithm) for p in points]
    base = min(rows, key=lambda r: r["devices"])
    for r in rows:
        r["speedup"], r["efficiency"] = speedup_efficiency(
            r["devices"], r["samples_per_s"], base["devices"], base["samples_per_s"]
        )
    return rows


# ------------------------------------------------------------------ inputs
def parse_link(text: str, gpu: str = "H100 SXM", per_node: int = 8) -> Link:
    """A preset name, 'BUSBW_GBS:LATENCY_US', or a collectives.json from `hpc-dl bench allreduce`.
    ``nvlink`` is for ``per_node`` GPUs of model ``gpu``."""
    if text == "nvlink":
        return nvlink(gpu, per_node)
    if text in LINKS:
        return LINKS[text]
    if Path(text).is_file():
        return link_from_collectives(json.loads(Path(text).read_text()), text)
    bw, sep, lat = text.partition(":")
    try:
        link = Link(float(bw), float(lat) if sep else 0.0, f"stated {text}")
    except ValueError:
        raise UserError(f"link {text!r}: a preset ({', '.join(LINKS)}), BUSBW_GBS:LATENCY_US, or a "
                        "collectives.json from `hpc-dl bench allreduce`") from None  # fmt: skip
    if link.busbw_gbs <= 0 or link.latency_us < 0:
        raise UserError(f"link {text!r}: bandwidth must be > 0 and latency >= 0")
    return link


def link_from_collectives(report: dict, source: str = "collectives.json") -> Link:
    """Bandwidth: the best all-reduce busbw measured; latency: the smallest message's time
    over the 2 (n - 1) steps of a ring."""
    rows = [r for r in report.get("rows", []) if r["op"] == "all_reduce"]
    n = report.get("world_size", 1)
    if not rows or n < 2:
        raise UserError(f"{source}: needs all_reduce rows measured on 2 or more ranks")
    smallest = min(rows, key=lambda r: r["bytes"])
    return Link(
        max(r["busbw_gbs"] for r in rows),
        smallest["time_us"] / (2 * (n - 1)),
        f"measured: {source} ({n} ranks, {report.get('device')}, {report.get('backend')})",
    )


def workload_from_sweep(report: dict, flops_per_sample: float, parameters: int, bytes_per_grad=4) -> Workload:
    """The base point of a measured sweep: its batch, its achieved FLOP/s per device."""
    base = next((r for r in report["points"] if r["point"] == report.get("base")), None)
    if base is None or not base.get("samples_per_s"):
        raise UserError("the measured sweep has no completed base point to start the projection from")
    achieved = flops_per_sample * base["samples_per_s"] / base["devices"] / 1e12
    return Workload(flops_per_sample, base["batch_per_device"], bytes_per_grad * parameters, achieved,
                    mode=report["mode"], base_devices=base["devices"])  # fmt: skip


def measured_overlap(report: dict) -> float:
    """The share of the gradient all-reduce hidden behind backward, from the largest completed
    multi-device point: without communication its step would take the base step scaled by the
    batch; what it took beyond that is exposed communication."""
    done = [r for r in report["points"] if r["status"] == "ok" and r.get("step_s")]
    base = next((r for r in done if r["point"] == report.get("base")), None)
    multi = [r for r in done if r["devices"] > 1 and r.get("comm_s")]
    if base is None or not multi:
        return 0.0
    r = max(multi, key=lambda r: r["devices"])
    exposed = r["step_s"] - base["step_s"] * r["batch_per_device"] / base["batch_per_device"]
    return min(1.0, max(0.0, 1 - exposed / r["comm_s"]))


def overlay(rows: list[dict], measured: list[dict]) -> list[dict]:
    """Predicted against measured efficiency at the measured points, with the model's error."""
    predicted = {r["point"]: r for r in rows}
    out = []
    for m in measured:
        p = predicted.get(m["point"])
        if p is None:
            continue
        entry = {"point": m["point"], "devices": m["devices"], "status": m["status"],
                 "measured_step_s": m.get("step_s"), "predicted_step_s": p["step_s"],
                 "measured_efficiency": m.get("efficiency"), "predicted_efficiency": p["efficiency"]}  # fmt: skip
        if m.get("efficiency") is not None:
            entry["error"] = p["efficiency"] - m["efficiency"]
        out.append(entry)
    return out


# ------------------------------------------------------------------ output
def format_table(result: dict) -> str:
    w = result["workload"]
    lines = [
        f"{w['mode']} scaling projection: {w['flops_per_sample'] / 1e9:.4g} GFLOP/sample, "
        f"{w['batch_per_device']:g} samples/device at the base point, {w['grad_bytes'] / 2**20:.1f} MiB of gradients, "
        f"{w['tflops_per_device']:.4g} TFLOP/s achieved per device, overlap {w['overlap']:.2f}",
        f"intra-node: {result['intra']['busbw_gbs']:g} GB/s, {result['intra']['latency_us']:g} us "
        f"({result['intra']['source']})",
        f"inter-node: {result['inter']['busbw_gbs']:g} GB/s, {result['inter']['latency_us']:g} us "
        f"({result['inter']['source']}); algorithm {result['algorithm']}",
        "",
        f"{'point':>10} {'devices':>8} {'compute ms':>11} {'comm ms':>9} {'exposed ms':>11} {'step ms':>9} "
        f"{'samples/s':>12} {'efficiency':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['point']:>10} {r['devices']:>8} {r['compute_s'] * 1e3:>11.4g} {r['comm_s'] * 1e3:>9.4g} "
            f"{r['exposed_comm_s'] * 1e3:>11.4g} {r['step_s'] * 1e3:>9.4g} {r['samples_per_s']:>12.5g} "
            f"{r['efficiency']:>10.3f}"
        )
    if result["measured"]:
        lines += ["", "measured points against the model:"]
        for m in result["measured"]:
            eff = m["measured_efficiency"]
            lines.append(
                f"  {m['point']:>8}: measured "
                + (f"{eff:.3f}" if eff is not None else m["status"])
                + f", predicted {m['predicted_efficiency']:.3f}"
                + (f" (error {m['error']:+.3f})" if "error" in m else "")
            )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    fig = figure(result)
    fig.savefig(path)
    fig.clf()


def figure(result: dict):
    from hpc_dl.telemetry.plots import device_axis, plt

    rows = result["rows"]
    devices = [r["devices"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    left.plot(devices, [r["efficiency"] for r in rows], "-", label="model")
    measured = [m for m in result["measured"] if m["measured_efficiency"] is not None]
    if measured:
        left.plot([m["devices"] for m in measured], [m["measured_efficiency"] for m in measured], "o",
                  color="tab:red", label="measured")  # fmt: skip
    left.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    left.set_ylabel("scaling efficiency")
    left.set_ylim(0, 1.1)
    right.stackplot(devices, [r["compute_s"] * 1e3 for r in rows], [r["exposed_comm_s"] * 1e3 for r in rows],
                    labels=["compute", "exposed all-reduce"])  # fmt: skip
    right.set_ylabel("ms per step")
    for ax in (left, right):
        device_axis(ax, [(r["devices"], r["nodes"]) for r in rows])
        ax.grid(alpha=0.3)
        ax.legend()
    w = result["workload"]
    fig.suptitle(f"{w['mode']} scaling projection ({result['algorithm']} all-reduce, overlap {w['overlap']:.2f})")
    fig.tight_layout()
    plt.close(fig)  # saved by the caller
    return fig


def result(w: Workload, points, intra: Link, inter: Link, algorithm: str, measured: list[dict]) -> dict:
    """The projection at ``points`` and at every measured point (one base for both)."""
    every = sorted(set(points) | {Point(m["nodes"], m["procs_per_node"]) for m in measured},
                   key=lambda p: (p.devices, p.nodes))  # fmt: skip
    rows = project(w, every, intra, inter, algorithm)
    return {
        "benchmark": "projection",
        "model": __doc__.split("\n\n")[1],
        "workload": asdict(w),
        "intra": asdict(intra),
        "inter": asdict(inter),
        "algorithm": algorithm,
        "rows": rows,
        "measured": overlay(rows, measured),
    }


def from_options(args) -> tuple[dict, Path]:
    """`hpc-dl bench project`'s options (an argparse namespace) -> (the projection, the folder with
    projection.json and projection.png): the workload from the config (or a measured sweep), the
    achieved rate, the overlap and the links."""
    import datetime

    from hpc_dl import config, data
    from hpc_dl.bench import scaling
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
        w = workload_from_sweep(measured, per_sample, params, args.bytes_per_grad)
    else:
        w = Workload(per_sample, cfg.data.batch_size * cfg.train.grad_accum, args.bytes_per_grad * params, 0)
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
        w.overlap = measured_overlap(measured)
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
    intra, inter = parse_link(args.intra, args.gpu, procs), parse_link(args.inter)
    projection = result(w, nodes, intra, inter, args.algorithm, measured["points"] if measured else [])
    out = Path(args.out or Path(cfg.log.dir) / f"projection-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "projection.json", projection)
    plot(projection, out / "projection.png")
    return projection, out
