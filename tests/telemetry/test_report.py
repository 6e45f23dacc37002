"""hpc-dl report: one self-contained HTML page per run, checked as written and as a real browser
(headless Chromium) renders it: every section, every plot decoded, nothing fetched, nothing from
the run's files turned into markup."""

import base64
import html
import json
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hpc_dl import config
from hpc_dl.cli import main
from hpc_dl.errors import UserError
from hpc_dl.telemetry import report

SECTIONS = ["config", "segments", "throughput", "breakdown", "ranks", "nodes", "stragglers", "failures"]
TINY = ["train.steps=12", "log.every=2", "log.progress=off", "log.wandb=false", "log.plots=false",
        "train.stop_signals=[]", "log.sample_interval_s=0.1"]  # fmt: skip
PAYLOAD = "<script>document.title='pwned'</script>"  # in a failure message: must stay text
PNG = b"\x89PNG\r\n\x1a\n"


def _event(kind: str, time: str, step: int, **fields) -> str:
    return json.dumps({"event": kind, "time": f"2026-12-01T{time}+00:00", "step": step, **fields}) + "\n"


def _start(time, step, restart, world_size=2, resumed=None) -> str:
    hosts = ["n1", "n2"][:world_size]
    return _event("start", time, step, world_size=world_size, hosts=hosts, job_id="123", restart=restart,
                  resumed_from=resumed)  # fmt: skip


def _craft(run: Path) -> None:
    """Around a real tiny run, what a long distributed job adds: earlier segments (pre-empted,
    failed, killed without a word, a line cut short), a second rank on another node named a
    straggler, the per-node table and a flight-recorder dump."""
    earlier = (_start("10:00:00", 0, 0) + _event("end", "10:20:00", 4, outcome="stopped", message="stopped by USR1")
               + _start("10:25:00", 4, 1, resumed="checkpoints/step_00000004.pt")
               + _event("end", "10:30:00", 6, outcome="failed", message=f"rank 1 (n2) failed {PAYLOAD}")
               + _start("10:35:00", 6, 2, world_size=1) + '{"event": "end", "ti')  # fmt: skip
    own = (run / "events.jsonl").read_text() if (run / "events.jsonl").exists() else ""
    # Without the writer (older trees), the real segment by hand.
    own = own or _start("10:40:00", 0, 3, world_size=1) + _event("end", "10:41:00", 12, outcome="completed")
    (run / "events.jsonl").write_text(earlier + "\n" + own)

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    for r in train[-2:]:
        r["ranks"] = [{**r["ranks"][0], "host": "n1"}, {**r["ranks"][0], "rank": 1, "host": "n2", "mem_peak_gib": 1.5}]
        r["straggler_ranks"] = [1]
    for r in train:  # as on a GPU with DDP
        r["mfu"], r["comm_s"] = 0.31, 0.002
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    summary = json.loads((run / "summary.json").read_text())
    summary["nodes"] = [{"host": "n1", "ranks": [0], "step_s": 0.02, "data_s": 0.001, "own_s": 0.02,
                         "straggler_windows": 0},
                        {"host": "n2", "ranks": [1], "step_s": 0.02, "data_s": 0.001, "own_s": 0.032,
                         "straggler_windows": 2}]  # fmt: skip
    summary["stragglers"] = [{"rank": 1, "host": "n2", "windows": 2, "worst_ratio": 1.6}]
    (run / "summary.json").write_text(json.dumps(summary))

    (run / "hang").mkdir()
    dump = {"rank": 0, "host": "n1", "step": 6, "members": [{"rank": 0, "host": "n1"}, {"rank": 1, "host": "n2"}],
            "entries": [{"pg": "default_pg", "seq": 40, "op": "all_reduce", "sizes": [[1024]], "dtypes": ["Float"],
                         "t": 1}]}  # fmt: skip
    (run / "hang" / "rank0.json").write_text(json.dumps(dump))


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Path:
    """A real 12-step run (in-process, a few seconds), then _craft; its page written by the command."""
    from hpc_dl.training.run import train

    run = tmp_path_factory.mktemp("story") / "run"
    train(config.load(None, TINY), str(run))
    _craft(run)
    assert main(["report", str(run)]) == 0
    return run


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def _png_size(src: str) -> tuple[int, int]:
    """Width and height from the IHDR chunk of an inline PNG."""
    assert src.startswith("data:image/png;base64,"), src[:60]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _self_contained(dom: Elements) -> None:
    ids = [attrs["id"] for tag, attrs in dom.tags if tag == "h2"]
    assert ids == SECTIONS
    for tag, attrs in dom.tags:
        for name in ("src", "href", "action", "poster", "data"):
            assert not (attrs.get(name) or "").lower().startswith(("http:", "https:", "//", "file:")), (tag, attrs)
    assert not [t for t, _ in dom.tags if t in ("link", "iframe", "object", "embed")]


def test_the_command_writes_one_page_and_prints_its_path(story, tmp_path, capsys):
    assert (story / report.FILE).is_file()
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(story), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_every_section_tells_its_part(story):
    page = (story / report.FILE).read_text()
    dom = Elements(page)
    _self_contained(dom)
    text = " ".join(dom.text)
    assert "model: name: cnn" in " ".join(text.split()) and "test accuracy" in text  # config.yaml and the facts
    for said in ("stopped (pre-empted, checkpointed)", "killed without a word", "checkpoints/step_00000004.pt",
                 "n1, n2", "123", "completed"):  # fmt: skip
        assert said in text, said
    images = dom.all("img")
    assert len(images) == 2 and all(w > 100 and h > 100 for w, h in (_png_size(i["src"]) for i in images))
    assert "compute (ms per step)" in text and "no MFU" not in text  # the medians
    ranks = page.split('id="ranks"')[1].split("<section>")[0]
    assert "mem_peak_gib" in ranks and "cpu_percent" in ranks and "<td>n2</td>" in ranks
    nodes = page.split('id="nodes"')[1].split("<section>")[0]
    assert "straggler_windows" in nodes and "<td>n2</td>" in nodes
    assert "1.60x the other ranks' median own time (60 % slower)" in text and "sbatch --exclude=n2" in text
    assert "named at steps" in text
    failures = page.split('id="failures"')[1]
    assert "failed at step 6" in failures and "rank 1 (n2) failed" in failures
    assert "stopped at all_reduce #40 on process group default_pg" in failures
    assert "rank 1 (n2) left no trace" in failures
    assert PAYLOAD not in page and html.escape(PAYLOAD) in page


# ------------------------------------------------------------------ in a browser
def _install_chromium() -> tuple[str | None, str | None]:
    """Chromium's path, installing the Debian package if needed; else None and why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found, None
    if os.geteuid() != 0:
        return None, "not installed, and installing it with apt-get needs root"
    if not shutil.which("apt-get"):
        return None, "not installed, and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    try:
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:  # no or stale package lists
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        return None, f"{' '.join(e.cmd)} did not finish in {e.timeout:.0f} s"
    if proc.returncode != 0 or not shutil.which("chromium"):
        return None, f"apt-get install chromium exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return shutil.which("chromium"), None


@pytest.fixture(scope="session")
def chromium() -> str:
    path, reason = _install_chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"headless Chromium is needed under CI: {reason}")
        pytest.skip(f"headless Chromium: {reason}")
    return path


# Put before the page's Content-Security-Policy (which forbids scripts, so that the probe does not
# weaken what is tested): after load, every image's decoded width and any resource fetched.
PROBE = """<script>
addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-decoded-width", img.complete ? img.naturalWidth : 0);
  const fetched = performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith("data:"));
  document.body.setAttribute("data-fetched", JSON.stringify(fetched));
  document.body.setAttribute("data-probe", "ran");
});
</script>
"""


def _render(chromium: str, page: Path, profile: Path) -> Elements:
    """The DOM after Chromium loaded ``page`` and ran its scripts."""
    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    return Elements(proc.stdout)


def test_chromium_renders_every_section_and_decodes_every_plot_fetching_nothing(story, chromium, tmp_path):
    page = (story / report.FILE).read_text()
    assert page.count("<head>") == 1 and 'http-equiv="Content-Security-Policy"' in page
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE))
    dom = _render(chromium, probed, tmp_path / "profile")
    _self_contained(dom)
    body = dom.all("body")[0]
    assert body.get("data-probe") == "ran", "the probe did not run: nothing below is checked"
    assert json.loads(body["data-fetched"]) == []
    images = dom.all("img")
    assert len(images) == 2
    for img in images:
        width, _ = _png_size(img["src"])
        assert int(img["data-decoded-width"]) == width > 0  # decoded by the browser, at the PNG's size
    assert len(dom.all("script")) == 1  # the probe; the failure message's <script> stayed text
    assert PAYLOAD in " ".join(dom.text)


# ------------------------------------------------------------------ what a run's files may hold
def test_whatever_the_files_hold_is_text_never_markup(tmp_path):
    (tmp_path / "config.yaml").write_text("log:\n  run_name: \"<script>alert('config')</script>\"\n")
    (tmp_path / "summary.json").write_text(json.dumps({"model": '<img src=x onerror="alert(1)">',
                                                       "nodes": [{"host": "</td></table><b>n1</b>"}]}))  # fmt: skip
    (tmp_path / "events.jsonl").write_text(
        _start("10:00:00", 0, 0) + _event("end", "10:01:00", 1, outcome="failed", message="<iframe src=x>")
    )
    page = report.build(tmp_path, diagnosis="<a href='http://x'>hang</a>")
    dom = Elements(page)
    assert {t for t, _ in dom.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "p", "nav", "a",
                                        "section", "h2", "table", "thead", "tbody", "tr", "th", "td", "pre", "ul",
                                        "li", "code"}  # fmt: skip
    assert all(a["href"].startswith("#") for a in dom.all("a"))
    text = " ".join(dom.text)
    for raw in ("<script>alert('config')</script>", '<img src=x onerror="alert(1)">', "</td></table><b>n1</b>",
                "<iframe src=x>", "<a href='http://x'>hang</a>"):  # fmt: skip
        assert raw not in page and raw in text


def test_a_run_with_only_its_config_gets_a_page_saying_what_is_missing(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  steps: 10\n")
    dom = Elements(report.build(tmp_path))
    _self_contained(dom)
    text = " ".join(dom.text)
    assert "steps: 10" in text and not dom.all("img")
    for missing in ("no summary.json", "no metrics.jsonl", "no events.jsonl", "no flight-recorder dumps"):
        assert missing in text, missing
    # It started and died before its first log step: the segment says so.
    (tmp_path / "events.jsonl").write_text(_start("10:00:00", 0, 0))
    text = " ".join(Elements(report.build(tmp_path)).text)
    assert "killed without a word" in text and "no metrics.jsonl" in text


def test_one_log_window_of_a_language_model_is_plotted_with_medians_from_the_metrics(tmp_path):
    record = {"split": "train", "step": 5, "loss": 2.5, "samples_per_s": 40.0, "tokens_per_s": 123456.0,
              "data_s": 0.01, "compute_s": 0.1, "optimizer_s": 0.02, "other_s": 0.0, "step_s": 0.13}  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    dom = Elements(report.build(tmp_path))
    _self_contained(dom)
    images = dom.all("img")
    assert [i["alt"].split(",")[0] for i in images] == ["tokens_per_s", "step time per phase per log window"]
    assert all(_png_size(i["src"])[0] > 100 for i in images)
    text = " ".join(dom.text)
    assert "from metrics.jsonl (no summary)" in text and "123,456" in text and "no summary.json" in text


def test_unreadable_files_and_a_malformed_hang_dump_are_named_on_the_page(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("[1, 2]")
    (tmp_path / "metrics.jsonl").write_bytes(b'{"split": "train", "step": 2, "loss": "x"}\n\xff\xfe\n')
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "rank0.json").write_text('{"rank": 0}')
    assert main(["report", str(tmp_path)]) == 0
    text = " ".join(Elements((tmp_path / report.FILE).read_text()).text)
    assert "summary.json is unreadable (ValueError: not a JSON object)" in text
    assert "metrics.jsonl is unreadable (UnicodeDecodeError" in text
    assert "rank0.json: not a hang dump written by hpc_dl" in text


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_no_run_directory_is_one_error_line_and_exit_2(tmp_path, capsys, what):
    path = tmp_path / "run"
    if what == "empty":
        path.mkdir()
    elif what == "file":
        path.write_text("x")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and "Traceback" not in err[0], err
    with pytest.raises(UserError):
        report.build(path)


def test_the_cli_imports_neither_torch_nor_matplotlib_and_report_needs_no_torch(story, tmp_path):
    """A login node: `hpc-dl --help` stays fast, and the report draws without importing torch."""
    code = ("import sys\nimport hpc_dl.cli\nloaded = lambda p: sorted(m for m in sys.modules if m.split('.')[0] == p)\n"
            "assert not loaded('torch') and not loaded('matplotlib'), sys.modules\n"
            "rc = hpc_dl.cli.main(['report', sys.argv[1], '--out', sys.argv[2]])\n"
            "assert rc == 0 and not loaded('torch'), loaded('torch')\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(story), str(tmp_path / "r.html")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
