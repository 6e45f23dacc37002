"""The course notebooks (notebooks/*.ipynb) run top to bottom in a real Jupyter kernel at the CI
size (their parameter cell reads HPC_DL_NOTEBOOK_SIZE=ci), each in a fresh folder; the copies in
the repository carry no outputs."""

import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TERMINAL = re.compile(r"\x1b\[|\r(?!\n)")  # a terminal bar's escape codes or carriage returns


def test_there_is_one_notebook_per_course_part():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(1, 10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_one_parameter_cell(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs before committing"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "HPC_DL_NOTEBOOK_SIZE" in tagged[0].source


def _run(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_DL_NOTEBOOK_SIZE", "ci")
    book = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return book, time.perf_counter() - t0


def _outputs(book, kind):
    return [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == kind]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_the_ci_size(path, tmp_path, monkeypatch):
    book, seconds = _run(path, tmp_path, monkeypatch)
    streams = "".join(o.text for o in _outputs(book, "stream"))
    assert not TERMINAL.search(streams), "terminal escape codes in a notebook's output"
    assert "Traceback" not in streams
    shown = _outputs(book, "display_data") + _outputs(book, "execute_result")
    images = [o for o in shown if "image/png" in o.get("data", {})]
    if path.stem != "09_ddp":  # every other part draws something
        assert images, "no figure shown"
    if "hpc_dl.train(" in "".join(c.source for c in book.cells):  # live progress, drawn in place
        bars = [o for o in shown if "<progress" in o.get("data", {}).get("text/html", "")]
        assert bars and all('value="' in o["data"]["text/html"] for o in bars)
        finished = re.findall(r'value="(\d+)" max="(\d+)"', bars[-1]["data"]["text/html"])
        assert finished and finished[0][0] == finished[0][1], "the last bar did not reach its end"
    print(f"{path.name}: {seconds:.1f} s")  # the time goes in the README, not an assertion
