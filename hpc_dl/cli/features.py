"""hpc-dl features: a trained CNN's first-layer filters and feature maps."""


def add(sub) -> None:
    fe = sub.add_parser(
        "features",
        help="a CNN's first-layer filters and feature maps, as pictures",
        description="Write RUN_DIR/features/ (or --out): filters.png, each filter of the model's first Conv2d as "
        "a small image (RGB for 3 input channels, grey otherwise), and feature_maps.png, test images and that "
        "layer's activation maps for its most active channels (the Zeiler & Fergus picture).",
    )
    fe.add_argument("run_dir", help="a run directory written by hpc-dl train (a CNN)")
    fe.add_argument("--images", type=int, default=4, help="test images shown, one per class where possible "
                    "(default 4)")  # fmt: skip
    fe.add_argument("--channels", type=int, default=8, help="activation maps per image, 1-16 (default 8)")
    fe.add_argument("--activation", action="store_true", help="show the maps after the activation that follows "
                    "the conv (e.g. its ReLU, after BatchNorm) rather than the conv's own output")  # fmt: skip
    fe.add_argument("--out", help="folder for the two PNGs (default: RUN_DIR/features)")
    fe.set_defaults(func=cmd_features)


def cmd_features(args) -> int:
    from hpc_dl.course import features

    files = features.features(args.run_dir, args.images, args.channels, args.activation, args.out)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
