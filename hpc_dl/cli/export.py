"""hpc-dl export: a trained model as an inference program."""


def add(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="write a trained model as an inference program (torch.export, ONNX)",
        description="Write RUN_DIR/export/: model.pt2 (torch.export; raw input -> class probabilities, "
        "preprocessing inside), model.onnx when onnxscript is installed, and predictor.json.",
    )
    ex.add_argument("run_dir", help="a run directory written by hpc-dl train")
    ex.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    ex.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from hpc_dl.course import export

    files = export.export(args.run_dir, onnx=not args.no_onnx)
    print("wrote " + ", ".join(str(f) for f in files))
    if not args.no_onnx and not any(f.name == export.ONNX for f in files):
        print("(no model.onnx: torch's ONNX exporter needs onnxscript; pip install onnxscript)")
    return 0
