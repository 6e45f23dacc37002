"""report.html: one self-contained page that tells the story of a run, readable on a login node
without internet. Sections: the config and key facts (config.yaml, summary.json), segments and
restarts (events.jsonl), throughput, MFU and loss, the step-time breakdown, per-rank and per-node
tables, stragglers, failures (metrics.jsonl, summary.json, the flight-recorder analysis).

Plots are PNGs inlined as data: URIs, the CSS is in the page, and a Content-Security-Policy lets
the browser fetch nothing and run no script. Everything read from the run's files is HTML-escaped
(a config value is text, never markup). A section whose input is missing or unreadable says so:
a run that died before its first log step still gets a page."""

import base64
import datetime
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on login or compute nodes
import matplotlib.pyplot as plt  # noqa: E402

from hpc_dl.errors import UserError, first_line  # noqa: E402
from hpc_dl.telemetry import events  # noqa: E402
from hpc_dl.telemetry.metrics import read, throughput  # noqa: E402
from hpc_dl.telemetry.record import PHASES, THROUGHPUT  # noqa: E402

FILE = "report.html"
EVENTS = events.NAME
SOURCES = ("config.yaml", "metrics.jsonl", EVENTS)  # a run directory holds at least one of these

MISSING = {  # what a missing file means for the reader
    "config.yaml": "no config.yaml in the run directory",
    "summary.json": "no summary.json: the run did not complete (it is written at the end)",
    "metrics.jsonl": "no metrics.jsonl: the run stopped before it began training",
    EVENTS: "no events.jsonl: a run from before segments were logged (or one that never started)",
}
FACTS = (("model", "model"), ("data", "data"), ("parameters", "parameters"), ("steps", "steps"),
         ("world_size", "world size"), ("device", "device"), ("strategy", "strategy"), ("precision", "precision"),
         ("global_batch_size", "global batch"), ("wall_time_s", "wall time (s)"))  # fmt: skip
OUTCOMES = {"completed": "completed", "stopped": "stopped (pre-empted, checkpointed)", "failed": "failed"}
SILENT = "no end recorded: killed without a word (e.g. by Slurm)"
SILENT_LAST = "no end recorded: still running, or killed without a word (e.g. by Slurm)"  # the newest segment
HOSTS_SHOWN = 6  # a 64-node segment lists its first hosts and the count
# The browser may load nothing but the inline PNGs and style; no script runs, whatever a file held.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """body{font-family:sans-serif;margin:2em auto;max-width:75em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
th{background:#f2f2f2}pre{background:#f6f6f6;padding:.8em;overflow:auto}.note{color:#666;font-style:italic}
img{max-width:100%}nav a{margin-right:1em}.failed{color:#b00}"""


class Run:
    """What a run directory holds; ``problems`` says, per file, why it is missing or unreadable."""

    def __init__(self, path: Path):
        self.path, self.problems = path, {}
        self.config = self._read("config.yaml", lambda p: p.read_text())
        self.summary = self._read("summary.json", _json_object) or {}
        self.records = [r for r in self._read("metrics.jsonl", read) or [] if isinstance(r, dict)]
        self.events = [e for e in self._read(EVENTS, read) or [] if isinstance(e, dict)]
        self.train = [r for r in self.records if r.get("split") == "train"]

    def _read(self, name: str, parse):
        path = self.path / name
        if not path.is_file():
            self.problems[name] = MISSING[name]
            return None
        try:
            return parse(path)
        except (OSError, ValueError) as e:  # ValueError: undecodable text, JSON that is not an object
            self.problems[name] = f"{name} is unreadable ({type(e).__name__}: {first_line(e)})"
            return None


def _json_object(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def build(run_dir: Path, diagnosis: str | None = None) -> str:
    """The page for ``run_dir``. ``diagnosis``: the one-line analysis of the flight-recorder dumps in
    RUN_DIR/hang, or why they cannot be read; hpc_dl.distributed sits above telemetry, so the caller
    makes it (None: no dumps)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not any((run_dir / name).is_file() for name in SOURCES):
        raise UserError(f"{run_dir}: not a run directory (it holds none of {', '.join(SOURCES)})")
    run = Run(run_dir)
    sections = [
        ("config", "Config", _config),
        ("segments", "Segments and restarts", _segments),
        ("throughput", "Throughput, MFU and loss", _throughput),
        ("breakdown", "Step-time breakdown", _breakdown),
        ("ranks", "Per rank", _ranks),
        ("nodes", "Per node", _nodes),
        ("stragglers", "Stragglers", _stragglers),
        ("failures", "Failures and diagnosis", lambda r: _failures(r, diagnosis)),
    ]
    body = []
    for anchor, title, make in sections:
        try:
            content = make(run)
        except Exception as e:  # noqa: BLE001 - odd values in one file cost one section, not the page
            content = _note(f"this section could not be made: {type(e).__name__}: {first_line(e)}")
        body.append(f'<section>\n<h2 id="{anchor}">{_e(title)}</h2>\n{content}\n</section>')
    nav = "".join(f'<a href="#{anchor}">{_e(title)}</a>' for anchor, title, _ in sections)
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections_html = "\n".join(body)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<title>hpc_dl run {_e(run_dir.resolve().name)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Run {_e(run_dir.resolve().name)}</h1>
<p>{_e(str(run_dir.resolve()))}, report made {made}</p>
<nav>{nav}</nav>
{sections_html}
</body>
</html>
"""


# ------------------------------------------------------------------ sections
def _config(run: Run) -> str:
    parts = []
    s = run.summary
    if s:
        facts = [(label, s[key]) for key, label in FACTS if key in s]
        for split in ("val", "test"):
            results = s.get(split) if isinstance(s.get(split), dict) else {}
            shown = ("loss", "accuracy", "rmse", "r2")  # r2, rmse: regression
            facts += [(f"{split} {metric}", results[metric]) for metric in shown if metric in results]
        parts.append(_table([{"fact": k, "value": v} for k, v in facts], ["fact", "value"]))
    else:
        parts.append(_note(run.problems.get("summary.json", "summary.json holds no facts")))
    if run.config is not None:
        parts.append(f"<p>config.yaml, the resolved config (<code>hpc-dl train config.yaml</code> reruns it):</p>"
                     f"<pre>{_e(run.config)}</pre>")  # fmt: skip
    else:
        parts.append(_note(run.problems["config.yaml"]))
    return "\n".join(parts)


def segments(events: list[dict]) -> list[dict]:
    """Each start with the end that follows it (None: the process was killed without a word)."""
    out = []
    for e in events:
        if e.get("event") == "start":
            out.append({"start": e, "end": None})
        elif e.get("event") == "end":
            if out and out[-1]["end"] is None and out[-1]["start"] is not None:
                out[-1]["end"] = e
            else:  # its start line was lost
                out.append({"start": None, "end": e})
    return out


def _segments(run: Run) -> str:
    if not run.events:
        return _note(run.problems.get(EVENTS, "events.jsonl holds no events"))
    rows, segs = [], segments(run.events)
    for i, seg in enumerate(segs):
        start, end = seg["start"] or {}, seg["end"] or {}
        hosts = start.get("hosts") or []
        hosts = hosts if isinstance(hosts, list) else [hosts]
        shown = ", ".join(map(str, hosts[:HOSTS_SHOWN])) + (f", ... ({len(hosts)} hosts)" if len(hosts) > HOSTS_SHOWN
                                                           else "")  # fmt: skip
        silent = SILENT if i < len(segs) - 1 else SILENT_LAST
        outcome = OUTCOMES.get(end.get("outcome"), end.get("outcome")) if seg["end"] else silent
        rows.append({"started": start.get("time"), "ended": end.get("time"), "from step": start.get("step"),
                     "to step": end.get("step"), "world size": start.get("world_size"), "hosts": shown,
                     "Slurm job": start.get("job_id"), "restart": start.get("restart"),
                     "resumed from": start.get("resumed_from"), "outcome": outcome,
                     "message": end.get("message")})  # fmt: skip
    return _table(rows, list(rows[0]))


def _throughput(run: Run) -> str:
    if not run.train:
        return _note(run.problems.get("metrics.jsonl", "no training log window in metrics.jsonl yet"))
    rate = "tokens_per_s" if _series(run.train, "tokens_per_s") else "samples_per_s"
    panels = [(rate.replace("_per_s", "/s"), {"train": _series(run.train, rate)})]
    mfu = _series(run.train, "mfu")
    if mfu:
        panels.append(("MFU (%)", {"train": [(x, 100 * y) for x, y in mfu]}))
    loss = {split: _series([r for r in run.records if r.get("split") == split], "loss") for split in ("train", "val")}
    panels.append(("loss", {k: v for k, v in loss.items() if v}))
    panels = [(label, series) for label, series in panels if any(series.values())]
    if not panels:
        return _note("the training log windows hold no throughput or loss")
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 2.2 * len(panels) + 0.6), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, (label, series) in zip(axes[:, 0], panels):
        for name, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    axes[-1, 0].set_xlabel("optimizer step")
    note = "" if mfu else _note("no MFU: the model's FLOPs or the device's peak were not known")
    return _png(fig, f"{rate}, MFU and loss against the step") + note


def _breakdown(run: Run) -> str:
    keys = [f"{p}_s" for p in PHASES]
    windows = [r for r in run.train if any(_number(r.get(k)) is not None for k in keys)]
    parts = []
    if windows:
        steps = [r["step"] for r in windows]
        ms = [[1e3 * (_number(r.get(k)) or 0.0) for r in windows] for k in keys]
        fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
        if len(windows) > 1:
            ax.stackplot(steps, *ms, labels=PHASES, alpha=0.85)
        else:  # one window: an area needs two points
            bottom = 0.0
            for phase, values in zip(PHASES, ms):
                ax.bar(steps, values, bottom=bottom, width=0.5, label=phase)
                bottom += values[0]
            ax.set_xticks(steps)
            ax.set_xlim(steps[0] - 2, steps[0] + 2)
        comm = [(r["step"], 1e3 * r["comm_s"]) for r in windows if _number(r.get("comm_s")) is not None]
        if comm:  # overlaps compute, so a line over the stack rather than a layer of it
            ax.plot(*zip(*comm), color="black", linestyle="--", marker=".", label="comm (gradient all-reduce)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("ms per step (window mean)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize="small", frameon=False)
        parts.append(_png(fig, "step time per phase per log window"))
    else:
        parts.append(_note(run.problems.get("metrics.jsonl", "no step-time breakdown in the training log windows")))
    medians, source = run.summary.get("throughput"), "summary.json"
    if not isinstance(medians, dict) or not medians:
        medians, source = throughput(run.records), "metrics.jsonl (no summary)"
    if medians:
        rows = [{"quantity": _unit(k), "median over log windows": _scaled(k, medians[k])} for k in THROUGHPUT
                if k in medians]  # fmt: skip
        parts.append(f"<p>Medians, from {_e(source)}; the first window (warm-up) is left out when there are "
                     "others.</p>")  # fmt: skip
        parts.append(_table(rows, ["quantity", "median over log windows"]))
    return "\n".join(parts)


def _ranks(run: Run) -> str:
    last = next((r for r in reversed(run.train) if r.get("ranks")), None)
    if last is None:
        why = run.problems.get("metrics.jsonl") or (
            "no per-rank figures in the log windows (one process with log.utilisation = false, or none logged yet)"
        )
        return _note(why)
    rows = [r for r in last["ranks"] if isinstance(r, dict)]
    return f"<p>From the last log window (step {_e(_fmt(last.get('step')))}); times are seconds per step.</p>" + (
        _table(rows, _columns(rows))
    )


def _nodes(run: Run) -> str:
    nodes = [n for n in run.summary.get("nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return _note(run.problems.get("summary.json", "no per-node table in summary.json (no per-rank times)"))
    return "<p>Means per step over the log windows, in seconds.</p>" + _table(nodes, _columns(nodes))


def _stragglers(run: Run) -> str:
    parts = []
    named = [s for s in run.summary.get("stragglers") or [] if isinstance(s, dict)]
    if named:
        rows = [{"rank": s.get("rank"), "host": s.get("host"), "log windows named": s.get("windows"),
                 "at worst": _slower(s.get("worst_ratio"))} for s in named]  # fmt: skip
        parts.append(_table(rows, list(rows[0])))
        hosts = ",".join(dict.fromkeys(str(s.get("host")) for s in named))
        parts.append(f"<p>If they stay slow, leave their nodes out next time: <code>sbatch --exclude={_e(hosts)}"
                     "</code></p>")  # fmt: skip
    elif "summary.json" in run.problems:
        parts.append(_note(run.problems["summary.json"]))
    over_time: dict = {}
    for r in run.train:
        for rank in r.get("straggler_ranks") or []:
            over_time.setdefault(rank, []).append(r.get("step"))
    if over_time:
        rows = [{"rank": rank, "named at steps": steps} for rank, steps in over_time.items()]
        parts.append("<p>Named in the log windows:</p>" + _table(rows, ["rank", "named at steps"]))
    if not named and not over_time and "summary.json" not in run.problems:
        parts.append("<p>None detected.</p>")
    return "\n".join(parts)


def _failures(run: Run, diagnosis: str | None) -> str:
    items = []
    segs = segments(run.events)
    for i, seg in enumerate(segs):
        start, end = seg["start"] or {}, seg["end"]
        where = f"segment {i + 1} (started {_fmt(start.get('time'))} at step {_fmt(start.get('step'))})"
        if end and end.get("outcome") == "failed":
            items.append(f"{where} failed at step {_fmt(end.get('step'))}, {_fmt(end.get('time'))}: "
                         f"{_fmt(end.get('message'))}")  # fmt: skip
        elif end is None:
            items.append(f"{where}: {SILENT if i < len(segs) - 1 else SILENT_LAST}")
    if run.summary.get("checkpoint_error"):
        items.append(f"checkpoint: {_fmt(run.summary['checkpoint_error'])}")
    parts = []
    if items:
        parts.append("<ul>" + "".join(f'<li class="failed">{_e(item)}</li>' for item in items) + "</ul>")
    elif EVENTS in run.problems:
        parts.append(_note(run.problems[EVENTS]))
    else:
        parts.append("<p>No failed segment.</p>")
    if diagnosis:
        parts.append(f"<p>Flight recorder (hang/, as <code>hpc-dl diagnose</code>): <code>{_e(diagnosis)}</code></p>")
    else:
        parts.append(_note("no flight-recorder dumps in hang/: the run did not stop in a collective"))
    return "\n".join(parts)


# ------------------------------------------------------------------ helpers
def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _series(records: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], _number(r.get(key))) for r in records
            if _number(r.get(key)) is not None and _number(r.get("step")) is not None]  # fmt: skip


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"  # 123,456 tokens/s, not 1.235e+05
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _unit(key: str) -> str:
    if key.startswith("mfu"):
        return f"{key} (%)"
    return f"{key[:-2]} (ms per step)" if key.endswith("_s") and not key.endswith("per_s") else key


def _scaled(key: str, value) -> float | None:
    value = _number(value)
    if value is None:
        return None
    if key.startswith("mfu"):
        return 100 * value
    return 1e3 * value if key.endswith("_s") and not key.endswith("per_s") else value


def _slower(ratio) -> str:
    ratio = _number(ratio)
    return "-" if ratio is None else f"{ratio:.2f}x the other ranks' median own time ({(ratio - 1) * 100:.0f} % slower)"


def _columns(rows: list[dict]) -> list[str]:
    """Every key of any row, in the order first seen (a rank without GPU figures leaves its cells empty)."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{_e(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _png(fig, alt: str) -> str:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
