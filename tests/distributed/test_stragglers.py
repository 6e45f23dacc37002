"""A rank made slow from outside is named as a straggler, with its host, in the log, the metrics and the
summary's per-node table; the others are not."""

import json
import os
import signal
import socket
import threading
import time

import pytest

from hpc_dl.telemetry.stragglers import WINDOWS, Stragglers
from tests.conftest import CONFIGS
from tests.distributed.launch import srun_like
from tests.distributed.test_failures import _wait_for_training


def _ranks(own, host="n"):
    return [{"rank": r, "host": f"{host}{r}", "step_s": 0.1, "data_s": 0.01, "own_s": t} for r, t in enumerate(own)]


def test_a_rank_is_named_only_after_several_slow_windows_in_a_row():
    s = Stragglers(margin=0.25)
    for _ in range(WINDOWS - 1):
        assert s.update(_ranks([0.01, 0.01, 0.05, 0.01])) == []
    assert s.update(_ranks([0.01, 0.01, 0.01, 0.01])) == []  # the streak breaks
    for _ in range(WINDOWS - 1):
        s.update(_ranks([0.01, 0.01, 0.05, 0.01]))
    (named,) = s.update(_ranks([0.01, 0.01, 0.05, 0.01]))
    assert (named["rank"], named["host"], named["windows"]) == (2, "n2", WINDOWS)
    assert "straggler: rank 2 (n2)" in Stragglers.line(named) and "sbatch --exclude=n2" in Stragglers.line(named)
    summary = s.summary()
    assert [x["rank"] for x in summary["stragglers"]] == [2]
    node = {n["host"]: n for n in summary["nodes"]}
    assert node["n2"]["straggler_windows"] == 1 and node["n0"]["straggler_windows"] == 0
    assert node["n2"]["own_s"] > node["n0"]["own_s"]


def test_margin_zero_names_nobody_and_within_the_margin_is_not_slow():
    assert Stragglers(0).update(_ranks([0.01, 0.5])) == []
    s = Stragglers(0.25)
    for _ in range(WINDOWS + 2):
        assert s.update(_ranks([0.010, 0.012, 0.011])) == []


@pytest.mark.slow
def test_a_rank_stopped_again_and_again_is_named_with_its_host(tmp_path):
    run = tmp_path / "run"
    args = [CONFIGS / "breast_cancer_mlp.yaml", "dist.strategy=ddp", "train.steps=2000", "log.every=40",
            "train.eval_every=0", "log.plots=false", "dist.preflight=false", "--run-dir", run]  # fmt: skip
    rank0, rank1 = srun_like("train", *args)
    done = threading.Event()

    def slow_down():  # rank 1 runs half the time: stopped 40 ms of every 80 ms
        while not done.is_set() and rank1.poll() is None:
            os.kill(rank1.pid, signal.SIGSTOP)
            time.sleep(0.04)
            os.kill(rank1.pid, signal.SIGCONT)
            time.sleep(0.04)

    try:
        _wait_for_training(run)
        stopper = threading.Thread(target=slow_down)
        stopper.start()
        _, err = rank0.communicate(timeout=300)
    finally:
        done.set()
        if rank1.poll() is None:
            os.kill(rank1.pid, signal.SIGCONT)
        rank1.communicate(timeout=60)
    assert rank0.returncode == 0, err
    host = socket.gethostname()
    assert f"straggler: rank 1 ({host})" in err and "straggler: rank 0" not in err, err
    summary = json.loads((run / "summary.json").read_text())
    assert [s["rank"] for s in summary["stragglers"]] == [1] and summary["stragglers"][0]["host"] == host
    (node,) = summary["nodes"]
    assert node["host"] == host and node["ranks"] == [0, 1] and node["straggler_windows"] >= 1
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    flagged = [r["straggler_ranks"] for r in records if r.get("straggler_ranks")]
    assert flagged and all(ranks == [1] for ranks in flagged)
    own = {r["rank"]: r["own_s"] for r in [r for r in records if r["split"] == "train"][-1]["ranks"]}
    print(f"own time per step in the last window: {own}; flagged in {len(flagged)} of {len(records)} windows")
