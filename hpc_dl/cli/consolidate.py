"""hpc-dl consolidate: a DeepSpeed or DCP (sharded) checkpoint as one fp32 state dict."""

from pathlib import Path

from hpc_dl.errors import UserError


def add(sub) -> None:
    co = sub.add_parser(
        "consolidate",
        help="write a DeepSpeed or DCP (FSDP) checkpoint as one fp32 state dict",
        description="Gather a sharded checkpoint (DeepSpeed ZeRO, or a DCP folder written by fsdp or "
        "checkpoint.format=dcp) into one fp32 state dict for inference and transfer learning.",
    )
    co.add_argument("checkpoint", help="a checkpoints/step_N folder, or a run directory (its latest checkpoint)")
    co.add_argument("--out", help="output file (default: <run dir>/model_fp32.pt)")
    co.set_defaults(func=cmd_consolidate)


def cmd_consolidate(args) -> int:

    from hpc_dl.checkpoint import dcp
    from hpc_dl.checkpoint.deepspeed import consolidate

    folder = Path(args.checkpoint)
    if (folder / "checkpoints").is_dir():  # a run directory: its latest checkpoint
        from hpc_dl.checkpoint import CheckpointDir

        folder = CheckpointDir(folder / "checkpoints", 1).latest() or folder
    if not folder.is_dir():
        raise UserError(
            f"{args.checkpoint}: not a DeepSpeed or DCP checkpoint folder, or a run directory that holds one"
        )
    out = Path(args.out or folder.parent.parent / "model_fp32.pt")
    if dcp.is_folder(folder):
        import torch

        from hpc_dl.fileio import atomic_write

        state = {k: v.float() if v.is_floating_point() else v for k, v in dcp.read_full(folder, "model").items()}
        atomic_write(out, lambda f: torch.save(state, f))
    else:
        consolidate(folder, out)
    print(f"wrote {out} (consolidated fp32 state dict of {folder})")
    return 0
