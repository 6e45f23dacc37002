"""Preflight's report: transport from NCCL's log, the socket warning, the failure header."""

from hpc_dl.dist import preflight


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
