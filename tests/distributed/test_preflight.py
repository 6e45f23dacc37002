"""Preflight's report: transport from NCCL's log, the socket warning, the failure header; where
NCCL's log goes (no GPU needed: the log is written by hand as NCCL writes it)."""

import os
import socket

import pytest

from hpc_dl.distributed import preflight
from tests.conftest import run_cli


def _row(rank, host, transport="IB", ok=True):
    return {"rank": rank, "host": host, "local_rank": 0, "device": "NVIDIA H100 80GB HBM3", "free_gib": 79.1,
            "nccl": "2.21.5", "transport": transport, "all_reduce_ok": ok, "busbw_gbs": 41.2}  # fmt: skip


def test_transport_is_read_from_the_nccl_log(tmp_path):
    log = tmp_path / "n1.123.log"
    log.write_text("n1:123:140 [0] NCCL INFO NET/Socket : Using [0]eth0:10.0.0.1<0>\n")
    assert preflight.nccl_transport(str(log)) == "Socket"
    log.write_text("n1:123:140 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB\n")
    assert preflight.nccl_transport(str(log)) == "IB"
    assert preflight.nccl_transport(str(tmp_path / "none.log")) is None


def test_multi_node_socket_fallback_is_warned():
    fine = preflight.format_report([_row(0, "n1"), _row(1, "n2")])
    assert "warning" not in fine and fine.startswith("preflight: all ranks checked in")
    slow = preflight.format_report([_row(0, "n1", "Socket"), _row(1, "n2", "Socket")])
    assert "warning: NCCL uses TCP sockets between nodes" in slow
    one_node = preflight.format_report([_row(0, "n1", "Socket"), _row(1, "n1", "Socket")])
    assert "warning" not in one_node


def test_failed_report_says_so_with_every_rank():
    text = preflight.format_report([_row(0, "n1"), _row(1, "n2", ok=False)])
    assert text.startswith("preflight: FAILED")
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["0", "1"]


# NCCL 2.2x at NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=INIT,NET: a node without usable InfiniBand.
FALLBACK_LOG = """\
gpu07:4711:4790 [0] NCCL INFO Bootstrap : Using ib0:10.1.0.7<0>
gpu07:4711:4790 [0] NCCL INFO NET/Plugin: No plugin found (libnccl-net.so)
gpu07:4711:4790 [0] NCCL INFO NET/IB : No device found.
gpu07:4711:4790 [0] NCCL INFO NET/Socket : Using [0]ib0:10.1.0.7<0>
gpu07:4711:4790 [0] NCCL INFO Using network Socket
gpu07:4711:4790 [0] NCCL INFO ncclCommInitRank comm 0x55d5c3a0 rank 0 nranks 8 cudaDev 0 busId 1b000 - Init COMPLETE
"""


def test_transport_is_the_network_nccl_says_it_uses(tmp_path):
    log = tmp_path / "gpu07.4711.log"
    log.write_text(FALLBACK_LOG)  # mentions NET/IB, but fell back to sockets
    assert preflight.nccl_transport(str(log)) == "Socket"
    log.write_text(FALLBACK_LOG.replace("Using network Socket", "Using network IBext_v8"))  # a network plugin
    assert preflight.nccl_transport(str(log)) == "IBext_v8"


NCCL_VARS = ("NCCL_DEBUG", "NCCL_DEBUG_FILE", "NCCL_DEBUG_SUBSYS", "HPC_DL_NCCL_LOG", "HPC_DL_NCCL_LOG_DIR")


@pytest.fixture
def nccl_env(monkeypatch):
    for name in NCCL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("level", [None, "WARN", "warn"])  # unset, or the quiet level templates and modules set
def test_a_quiet_nccl_is_captured_at_info_into_the_log_dir(nccl_env, tmp_path, level):
    if level:
        nccl_env.setenv("NCCL_DEBUG", level)
    nccl_env.setenv("HPC_DL_NCCL_LOG_DIR", str(tmp_path / "nccl-42"))
    preflight.capture_nccl_log()
    log = tmp_path / "nccl-42" / f"{socket.gethostname()}.{os.getpid()}.log"
    assert os.environ["NCCL_DEBUG"] == "INFO" and os.environ["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert os.environ["NCCL_DEBUG_FILE"] == str(log) and os.environ["HPC_DL_NCCL_LOG"] == str(log)
    log.write_text(FALLBACK_LOG)  # what NCCL then writes there
    assert preflight.nccl_transport() == "Socket"


def test_a_users_own_nccl_log_is_left_alone_and_read(nccl_env, tmp_path):
    nccl_env.setenv("NCCL_DEBUG", "INFO")
    preflight.capture_nccl_log()  # INFO on the console: their choice
    assert "NCCL_DEBUG_FILE" not in os.environ and os.environ["NCCL_DEBUG"] == "INFO"
    nccl_env.setenv("NCCL_DEBUG_FILE", f"{tmp_path}/nccl.%h.%p.log")
    preflight.capture_nccl_log()
    log = tmp_path / f"nccl.{socket.gethostname().split('.')[0]}.{os.getpid()}.log"  # NCCL's %h stops at a dot
    assert os.environ["NCCL_DEBUG_FILE"] == f"{tmp_path}/nccl.%h.%p.log" and os.environ["HPC_DL_NCCL_LOG"] == str(log)


def test_a_failed_collective_quotes_nccls_last_warning(nccl_env, tmp_path):
    assert preflight.nccl_warning_note() == ""
    log = tmp_path / "n1.1.log"
    log.write_text(FALLBACK_LOG + "gpu07:4711:4795 [0] NCCL WARN NET/Socket : peer 10.1.0.8 closed the connection\n")
    nccl_env.setenv("HPC_DL_NCCL_LOG", str(log))
    note = preflight.nccl_warning_note()
    assert "NCCL's last warning: gpu07:4711:4795 [0] NCCL WARN NET/Socket : peer 10.1.0.8 closed" in note
    assert str(log) in note


def test_rows_without_the_health_figures_still_format():
    """A report of the earlier shape (no matmul, copy or pairs): the same table, no pairs line, nobody named."""
    lines = preflight.format_report([_row(0, "n1"), _row(1, "n2")]).splitlines()
    assert len(lines) == 4 and lines[1].split()[-1] == "matmul_tflops" and lines[2].split()[-1] == "None"
    assert preflight.outliers([_row(0, "n1"), _row(1, "n2")]) == []


@pytest.mark.parametrize("margin", ["1", "-0.1", "x"])
def test_preflight_refuses_a_margin_that_is_not_a_fraction(margin):
    proc = run_cli("preflight", "--margin", margin, check=False)  # refused before torch is imported
    assert proc.returncode == 2 and "--margin" in proc.stderr
