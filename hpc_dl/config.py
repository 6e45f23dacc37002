"""The run configuration: typed sections, YAML files, dotted overrides, validation.

Every option hpc_dl knows is declared in this file, so this is the place to read
what a config may say. The dataclass defaults are the embedded default run (a
small CNN on scikit-learn's digits, on the CPU). A section whose type is a union
of dataclasses (``model``, ``data``) picks its variant by its ``name`` key.

Validation is strict: unknown keys are errors with a suggestion, values are
checked against their type and bounds, and every error names the field, the bad
value and where it came from (file or command-line override).
"""

import dataclasses
import difflib
import math
import re
import signal
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hpc_dl.errors import ConfigError


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A field with a help text, numeric bounds (gt, ge, lt, le) and script=True for a value written
    into a batch script (see _script_safe)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _script_safe(section: Any, name: str) -> None:
    """Refuse control characters in the section's script=True fields, which submitit writes into the
    batch script (#SBATCH lines, paths on the srun line): a newline ends the #SBATCH comment and makes
    the rest a command. Run by the section itself, so a config file, an override and `hpc-dl submit`'s
    flags (which build the section directly) are all checked."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not f.metadata.get("script") or value is None:
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]  # a list: each line on its own
        for i, item in items:
            if _CONTROL.search(str(item)):
                key = f"{name}.{f.name}" + ("" if i is None else f"[{i}]")
                raise ConfigError(
                    f"{key} = {str(item)!r}: control characters are not allowed in a value written "
                    "into the batch script"
                )


# --------------------------------------------------------------------- models
# The one list of each family's names: hpc_dl.models builds every name here (torchvision by its own
# name, a CIFAR ResNet's depth from its number), so adding a model is one edit, checked by the zoo test.
TORCHVISION_MODELS = ("alexnet", "vgg11", "vgg16", "googlenet", "resnet18", "resnet50")
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")  # 6n+2 layers


@dataclass
class MLPConfig:
    name: Literal["mlp"] = "mlp"
    hidden: list[int] = _opt([64, 32], "hidden layer widths; [] is a single perceptron", ge=1)
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = _opt("relu", "hidden activation")
    dropout: float = _opt(0.0, "dropout after each hidden layer", ge=0, lt=1)


@dataclass
class CNNConfig:
    name: Literal["cnn"] = "cnn"
    channels: list[int] = _opt([32, 64], "output channels of each conv-pool block", ge=1)
    kernel_size: int = _opt(3, "conv kernel size (odd, 'same' padding)", ge=1)
    batch_norm: bool = _opt(True, "BatchNorm after each conv")
    hidden: int = _opt(128, "width of the classifier's hidden layer; 0 for none", ge=0)
    dropout: float = _opt(0.25, "dropout before the classifier's last layer", ge=0, lt=1)


@dataclass
class LeNetConfig:
    """LeNet-5 as in LeCun et al. 1998: 32x32 input, tanh, average pooling, about 61k parameters."""

    name: Literal["lenet5"] = "lenet5"


@dataclass
class TorchvisionConfig:
    """torchvision's implementation, randomly initialised."""

    name: Literal[TORCHVISION_MODELS] = "resnet18"
    small_input: bool = _opt(
        False, "adapt the stem for small images (e.g. 32x32): 3x3 stride-1 first conv, no early pooling"
    )


@dataclass
class CifarResNetConfig:
    """He et al. 2016's CIFAR ResNets (6n+2 layers, three stages of width 16, 32, 64)."""

    name: Literal[CIFAR_RESNETS] = "resnet20"
    width: int = _opt(16, "channels of the first stage (doubled in each later one)", ge=1)


@dataclass
class GPTConfig:
    """Decoder-only transformer (GPT-2 layout, pre-norm). The context length is data.block_size."""

    name: Literal["gpt"] = "gpt"
    n_layer: int = _opt(4, "transformer blocks", ge=1)
    n_head: int = _opt(4, "attention heads", ge=1)
    n_embd: int = _opt(128, "model width; divisible by n_head", ge=1)
    dropout: float = _opt(0.0, "dropout on attention output, MLP and embeddings", ge=0, lt=1)
    bias: bool = _opt(False, "biases in linear layers and LayerNorms")
    tie_weights: bool = _opt(True, "share the token embedding with the output layer")
    pad_vocab_to: int = _opt(64, "round the output layer up to a multiple of this, for fast matmuls", ge=1)


ModelConfig = Union[MLPConfig, CNNConfig, LeNetConfig, TorchvisionConfig, CifarResNetConfig, GPTConfig]


def names(section: type) -> tuple[str, ...]:
    """The values a section's ``name`` may take: its Literal, the one list of them."""
    return typing.get_args(typing.get_type_hints(section)["name"])


# ----------------------------------------------------------------------- data
@dataclass
class _DataCommon:
    batch_size: int = _opt(64, "micro-batch size per process", ge=1)
    eval_batch_size: int = _opt(512, "batch size for evaluation", ge=1)
    val_fraction: float = _opt(0.15, "share of the samples held out for validation", gt=0, lt=1)
    test_fraction: float = _opt(0.15, "share of the samples held out for the test", gt=0, lt=1)
    split_seed: int = _opt(0, "seed of the train/val/test split (fixed across training seeds)", ge=0)
    num_workers: int = _opt(0, "DataLoader worker processes", ge=0)
    persistent_workers: bool = _opt(False, "keep loader workers alive across epochs")
    pin_memory: bool = _opt(True, "page-locked host batches for faster copies to a GPU (ignored on the CPU)")
    on_device: bool = _opt(False, "in-memory data sets: hold the tensors on the training device")


@dataclass
class AugmentConfig:
    """Training-time augmentation (torchvision transforms.v2, or batched on the device)."""

    crop_padding: int = _opt(0, "random crop of the original size after zero-padding by this many pixels", ge=0)
    hflip: bool = _opt(False, "random horizontal flip")
    color_jitter: float = _opt(0.0, "strength of random brightness/contrast/saturation changes", ge=0, le=1)
    erasing: float = _opt(0.0, "probability of random erasing (cutout) per image", ge=0, le=1)
    on_device: bool = _opt(False, "augment whole batches on the training device instead of in loader workers")
    eval: bool = _opt(False, "also augment validation/test batches (normally train only)")


TASK_HELP = (
    "regression: the target is a number (one output, MSE loss on the target standardised on the training "
    "split; RMSE, MAE and R^2 in its own units); classification: each distinct value is a class; auto: classification"
)


@dataclass
class DigitsConfig(_DataCommon):
    """scikit-learn's 8x8 handwritten digits, 1797 images, 10 classes."""

    name: Literal["digits"] = "digits"
    image_size: int = _opt(8, "upsample the 8x8 images (e.g. 32 for LeNet-5 or ResNets)", ge=8)
    channels: int = _opt(1, "repeat the grey channel (3 for models built for RGB)", ge=1)
    classes: list[int] = _opt([], "keep only these digits, relabelled 0..k-1 in this order; []: all ten", ge=0, le=9)


@dataclass
class BreastCancerConfig(_DataCommon):
    """scikit-learn's Wisconsin breast-cancer set: 569 rows, 30 features, binary."""

    name: Literal["breast_cancer"] = "breast_cancer"
    scaling: Literal["standard", "minmax"] = _opt("standard", "feature scaling, fitted on train only")


@dataclass
class CifarConfig(_DataCommon):
    """CIFAR-10/100 from the official python version (cifar-10-batches-py, cifar-100-python)."""

    name: Literal["cifar10", "cifar100"] = "cifar10"
    root: str = _opt("data", "folder that holds cifar-10-batches-py/ or cifar-100-python/")
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_padding=4, hflip=True))


@dataclass
class ImageFolderConfig(_DataCommon):
    """An ImageNet-style tree: root/train/<class>/*.JPEG, root/val/<class>/..., optional root/test/."""

    name: Literal["imagefolder"] = "imagefolder"
    root: str = _opt("data/imagenet", "folder with train/ and val/ (and optionally test/)")
    image_size: int = _opt(224, "side of the square crop fed to the model", ge=8)
    mean: list[float] = _opt([0.485, 0.456, 0.406], "per-channel normalisation mean (ImageNet's)")
    std: list[float] = _opt([0.229, 0.224, 0.225], "per-channel normalisation std (ImageNet's)", gt=0)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=True))


@dataclass
class CSVConfig(_DataCommon):
    """A CSV file with a header row; one column is the target: a class label, or a number (data.task)."""

    name: Literal["csv"] = "csv"
    path: str = _opt("data.csv", "the CSV file")
    target: str = _opt("label", "name of the target column (class label, or a number for regression)")
    categorical: list[str] = _opt([], "columns one-hot encoded (all others must be numeric)")
    scaling: Literal["standard", "minmax"] = _opt("standard", "numeric scaling, fitted on train only")
    task: Literal["auto", "classification", "regression"] = _opt("auto", TASK_HELP)


@dataclass
class TokensConfig(_DataCommon):
    """Token ids for language modelling: a flat binary file (nanoGPT's train.bin) or the built-in corpus."""

    name: Literal["tokens"] = "tokens"
    path: str | None = _opt(
        None, "a .bin file of token ids, or a folder with train.bin and val.bin; null: the built-in character corpus"
    )
    dtype: Literal["uint16", "uint32"] = _opt("uint16", "integer type of the ids in the file")
    vocab_size: int | None = _opt(None, "vocabulary size; null: the largest id in the data + 1", ge=1)
    block_size: int = _opt(128, "context length: tokens per training sequence", ge=1)
    stride: int | None = _opt(None, "tokens between the starts of consecutive sequences; null: block_size", ge=1)


@dataclass
class SyntheticConfig(_DataCommon):
    """Random data for benchmarks: the input pipeline costs nothing next to the model."""

    name: Literal["synthetic_images", "synthetic_tabular", "synthetic_tokens"] = "synthetic_images"
    shape: list[int] = _opt([3, 32, 32], "input shape of one sample (images: C, H, W; tabular: features)", ge=1)
    num_classes: int = _opt(10, "classes (images, tabular) or vocabulary size (tokens)", ge=2)
    block_size: int = _opt(128, "tokens: context length", ge=1)
    samples: int = _opt(1024, "samples in the training split (val and test get a quarter each)", ge=1)
    seed: int = _opt(0, "seed of the generated data", ge=0)
    task: Literal["auto", "classification", "regression"] = _opt(
        "auto", "synthetic_tabular: regression (a fixed smooth function of the inputs plus noise) or classification"
    )


DataConfig = Union[
    DigitsConfig, BreastCancerConfig, CifarConfig, ImageFolderConfig, CSVConfig, TokensConfig, SyntheticConfig
]


# -------------------------------------------------------------- optimisation
@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = _opt("adamw", "optimizer")
    lr: float = _opt(3e-3, "peak learning rate", gt=0)
    weight_decay: float = _opt(0.01, "weight decay (decoupled for adamw)", ge=0)
    momentum: float = _opt(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = _opt(False, "Nesterov momentum (SGD only)")
    betas: list[float] = _opt([0.9, 0.999], "Adam/AdamW betas", ge=0, lt=1)
    eps: float = _opt(1e-8, "Adam/AdamW epsilon", gt=0)
    schedule: Literal["cosine", "step", "constant"] = _opt("cosine", "LR schedule after warm-up")
    warmup_steps: int = _opt(0, "linear warm-up steps from 0 to lr", ge=0)
    min_lr_ratio: float = _opt(0.0, "cosine: final lr as a fraction of lr", ge=0, le=1)
    step_size: int = _opt(100, "step: multiply lr by gamma every step_size steps", ge=1)
    gamma: float = _opt(0.1, "step: decay factor", gt=0, le=1)


@dataclass
class TransferConfig:
    """Start from trained weights (transfer learning, fine-tuning). Nothing is downloaded."""

    weights: str | None = _opt(
        None, "an hpc_dl run directory or checkpoint, or a torchvision weights file (.pth) downloaded beforehand"
    )
    head: Literal["new", "keep"] = _opt(
        "new", "new: a freshly initialised classifier for this data's classes; keep: the file's (a second phase)"
    )
    freeze: str | None = _opt(
        None, "backbone (all but the head), none, or a layer name (it and all before it); null: backbone with weights"
    )
    backbone_lr: float = _opt(1.0, "LR of the trained backbone layers as a fraction of optim.lr", gt=0, le=1)


@dataclass
class TrainConfig:
    steps: int | None = _opt(None, "optimizer steps (give steps or epochs)", ge=1)
    epochs: float | None = _opt(8.0, "passes over the training split (give steps or epochs)", gt=0)
    grad_accum: int = _opt(1, "micro-batches per optimizer step", ge=1)
    grad_clip: float | None = _opt(1.0, "clip the global gradient norm; null for none", gt=0)
    eval_every: int = _opt(20, "evaluate on the validation split every N steps; 0 only at end", ge=0)
    seed: int = _opt(0, "seed for weights, shuffling and dropout", ge=0)
    deterministic: bool = _opt(False, "deterministic kernels (slower on GPU)")
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto: CUDA when present, else CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _opt(
        "auto", "auto: bf16 autocast on GPUs that support it, fp32 on the CPU"
    )
    tf32: bool = _opt(True, "TF32 matmuls/convs on Ampere and newer GPUs")
    channels_last: bool = _opt(False, "channels_last memory format for conv nets")
    compile: bool = _opt(False, "torch.compile the model")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = _opt("default", "torch.compile mode")
    activation_checkpointing: Literal["none", "full", "selective"] = _opt(
        "none", "recompute the activations of every (full) or every 2nd (selective) block in backward; gpt, ResNets"
    )
    stop_signals: list[str] = _opt(
        ["USR1", "TERM"], "signals on which every rank checkpoints after its current step and stops (pre-emption)"
    )


@dataclass
class CheckpointConfig:
    every: int = _opt(0, "save every N steps; 0 only at the end", ge=0)
    keep_last: int = _opt(3, "checkpoints kept on disk (oldest deleted first)", ge=1)
    format: Literal["auto", "file", "dcp"] = _opt(
        "auto", "file: one .pt file (rank 0); dcp: a torch.distributed.checkpoint folder; auto: dcp for fsdp"
    )
    async_save: bool = _opt(False, "write DCP checkpoints in the background while training goes on (one at a time)")


@dataclass
class LogConfig:
    dir: str = _opt("runs", "parent folder of run directories", script=True)  # bench scaling's Slurm logs
    run_name: str | None = _opt(None, "run directory name; default <data>-<model>-<time or job id>")
    every: int = _opt(10, "steps between metrics records and plain progress lines", ge=1)
    progress: Literal["auto", "bar", "plain", "notebook", "off"] = _opt(
        "auto",
        "auto: a bar on a terminal, one redrawn in place in a Jupyter notebook, plain lines otherwise (Slurm logs)",
    )
    plots: bool = _opt(True, "write PNG plots of the curves at the end")
    peak_tflops: float | None = _opt(None, "peak TFLOP/s per device for MFU; null: from the GPU model", gt=0)
    achievable_tflops: float | None = _opt(None, "measured matmul TFLOP/s (hpc-dl bench gemm) for a second MFU", gt=0)
    utilisation: bool = _opt(True, "sample GPU (NVML) and host (CPU, memory) utilisation on every rank")
    sample_interval_s: float = _opt(1.0, "seconds between utilisation samples", gt=0)
    straggler_margin: float = _opt(
        0.25,
        "name a rank whose own time per step exceeds the median's by this fraction, 3 windows in a row, and a "
        "node or rank this much slower than the others in preflight (0: off)",
        ge=0,
    )
    profile_steps: int = _opt(0, "torch.profiler: trace this many steps into <run>/profile (0: off)", ge=0)
    profile_warmup: int = _opt(5, "torch.profiler: steps run before the traced ones (compilation, caches)", ge=0)
    wandb: bool = _opt(True, "log to Weights & Biases (rank 0; offline without an API key)")
    wandb_mode: Literal["auto", "online", "offline"] = _opt(
        "auto", "auto: online when an API key is configured; WANDB_MODE in the environment wins"
    )
    wandb_project: str = _opt("hpc_dl", "W&B project")
    wandb_entity: str | None = _opt(None, "W&B entity (team or user); null: the key's default")
    wandb_group: str | None = _opt(None, "W&B group, e.g. one per sweep")
    wandb_job_type: str = _opt("train", "W&B job type")
    wandb_tags: list[str] = _opt([], "W&B tags")
    wandb_notes: str | None = _opt(None, "W&B notes")

    def __post_init__(self):
        _script_safe(self, "log")


@dataclass
class DistConfig:
    strategy: Literal["single", "ddp", "fsdp", "deepspeed"] = _opt(
        "single", "one process, DDP, FSDP2 (fully_shard), or DeepSpeed ZeRO"
    )
    timeout_s: float = _opt(
        120.0, "training time-out: a collective that waits longer (a hung or dead rank) fails the job, named", gt=0
    )
    startup_timeout_s: float = _opt(
        300.0, "start-up time-out: rendezvous, check-in and everything until the first step completes", gt=0
    )
    preflight: bool = _opt(True, "check every rank and an all-reduce before training (distributed runs)")
    bucket_mb: float = _opt(25.0, "ddp: gradient bucket size in MiB", gt=0)
    gradient_as_bucket_view: bool = _opt(True, "ddp: gradients are views into the buckets (saves a copy)")
    static_graph: bool = _opt(False, "ddp: the graph is the same every step (enables more optimisations)")
    zero_stage: int = _opt(1, "deepspeed: ZeRO stage 0-3", ge=0, le=3)
    fsdp_reshard_after_forward: bool = _opt(True, "fsdp: free gathered parameters after forward (less memory)")
    fsdp_cpu_offload: bool = _opt(False, "fsdp: keep sharded parameters, gradients and optimizer state in host memory")
    deepspeed_config: str | None = _opt(None, "deepspeed: a JSON file merged over the generated config (its keys win)")


@dataclass
class SlurmConfig:
    """Resources for `hpc-dl submit` (submitit); the --flags of that command win."""

    nodes: int = _opt(1, "nodes", ge=1)
    gpus_per_node: int = _opt(0, "GPUs per node; 0 on a CPU partition", ge=0)
    tasks_per_node: int | None = _opt(None, "processes per node; null: one per GPU, or 1 without GPUs", ge=1)
    cpus_per_task: int = _opt(8, "CPUs per process (data-loading workers and threads)", ge=1)
    mem_gb: float | None = _opt(None, "memory per node in GB; null: the partition's default", gt=0)
    time_min: int = _opt(60, "time limit in minutes", ge=1)
    partition: str | None = _opt(None, "partition", script=True)
    account: str | None = _opt(None, "account (project) charged", script=True)
    qos: str | None = _opt(None, "quality of service", script=True)
    constraint: str | None = _opt(None, "node features, e.g. h100", script=True)
    signal_delay_s: int = _opt(120, "seconds before the time limit that the job is warned, to checkpoint", ge=0)
    max_restarts: int = _opt(20, "requeues after pre-emption or the time limit", ge=0)
    folder: str = _opt("slurm_logs/%j", "submitit's folder for logs and job pickles (%j: the job id)", script=True)
    gres: str | None = _opt(
        None, "generic resources per node, e.g. gpu:4 where a site counts GPUs as GRES (instead of gpus_per_node)",
        script=True,
    )  # fmt: skip
    setup: list[str] = _opt(
        [], "shell lines the batch script runs before srun, e.g. 'module load CUDA' or 'export NCCL_IB_HCA=mlx5'",
        script=True,
    )  # fmt: skip
    container: str | None = _opt(None, "an Apptainer image every task runs in (apptainer exec --nv)", script=True)
    bind: list[str] = _opt([], "folders bound into the container besides submitit's folder and log.dir", script=True)
    wckey: str | None = _opt(None, "workload characterisation key (--wckey); none unless given", script=True)

    def __post_init__(self):
        _script_safe(self, "slurm")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=CNNConfig)
    data: DataConfig = field(default_factory=DigitsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


# ------------------------------------------------------------------- loading
class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: PyYAML would silently keep the last."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `progress: off` stays the string 'off'.
    A key given twice in one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class names it
                    continue
                if earlier is not key_node:
                    line = earlier.start_mark.line + 1
                    raise DuplicateKeyError(
                        None, None, f"duplicate key '{key}'", key_node.start_mark, f"first given at line {line}"
                    )
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or the embedded default), apply ``a.b=value`` overrides, validate."""
    tree: dict = {}
    source = "the embedded default"
    if path is not None:
        source = str(path)
        tree = _read_yaml(find(path))
    origins = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value, item)
        origins[key] = f"override '{item}'"
    _drop_other_variants_keys(tree, origins)
    # Run length is steps or epochs: giving one replaces the other, unless both are given at one level.
    train = tree.get("train")
    if isinstance(train, dict):
        for given, other in (("steps", "epochs"), ("epochs", "steps")):
            on_cli = f"train.{given}" in origins and f"train.{other}" not in origins
            if train.get(given) is not None and (on_cli or other not in train):
                train[other] = None
    cfg = _Builder(source, origins).build(Config, tree, "")
    _check(cfg, _Builder(source, origins))
    return cfg


SHIPPED = Path(__file__).parent / "configs"  # package data; the checkout's configs/ links here


def shipped() -> list[str]:
    """Names of the configs that come with hpc_dl."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def find(path: str | Path) -> Path:
    """The config file at ``path``, else the shipped config it names: ``digits_lenet5``,
    ``digits_lenet5.yaml`` or the README's ``configs/digits_lenet5.yaml`` work from any directory,
    also from an installed package, which has no configs/ folder."""
    given = Path(path)
    if given.exists() or given.parent not in (Path("."), Path("configs")) or given.suffix not in ("", ".yaml"):
        return given  # _read_yaml names a missing file
    if (SHIPPED / f"{given.stem}.yaml").is_file():
        return SHIPPED / f"{given.stem}.yaml"
    names = shipped()
    close = difflib.get_close_matches(given.stem, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"config file not found: {path}, nor a shipped config{hint}; shipped: {', '.join(names)}")


def _drop_other_variants_keys(tree: dict, origins: dict[str, str]) -> None:
    """An override that picks another variant (data.name=synthetic_images on a CIFAR file) drops the
    file's keys the new variant does not have (data.root): the file wrote them for its own variant.
    A key given by an override stays, and the builder reports it."""
    hints = typing.get_type_hints(Config)
    for section, tp in hints.items():
        node, variants = tree.get(section), _dataclass_variants(tp)
        if len(variants) < 2 or f"{section}.name" not in origins or not isinstance(node, dict):
            continue
        by_name = {n: v for v in variants for n in names(v)}
        new = by_name.get(node.get("name"))
        if new is None:
            continue  # the builder names the bad choice
        keep = {f.name for f in dataclasses.fields(new)}
        for key in [k for k in node if k not in keep]:
            if not any(_related(f"{section}.{key}", given) for given in origins):
                del node[key]


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}: a nested config as its dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # e.g. an image or a checkpoint given by mistake
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); a config is a YAML file") from None
    try:
        tree = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, DuplicateKeyError):
            raise ConfigError(f"{path}: {problem}{where} ({e.note})") from None
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if tree is None:  # silently running the embedded default instead would hide the mistake
        raise ConfigError(f"{path}: the file is empty (or only comments); give the sections to set, e.g. 'train:'")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {_kind(tree)}")
    return tree


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw  # e.g. an unquoted string with a colon: keep it as text
    return key, value


def _set_dotted(tree: dict, key: str, value: Any, item: str) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parents[: i + 1])
            raise ConfigError(f"override '{item}': '{prefix}' is a value, not a section")
        node = child
    node[leaf] = value


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key the schema knows, over all variants (for suggestions)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        paths.append(path)
        for variant in _dataclass_variants(hints[f.name]):
            paths += _all_paths(variant, path + ".")
    return paths


def _dataclass_variants(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return []


def _related(path: str, key: str) -> bool:
    """Whether the override ``key`` set ``path``, a part of it, or something below it."""
    a, b = sorted((path, key), key=len)
    return a == b or b.startswith((a + ".", a + "["))


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


class _Builder:
    """Turns a tree of plain values into dataclasses, raising ConfigError on the first fault."""

    def __init__(self, source: str, origins: dict[str, str]):
        self.source = source
        self.origins = origins

    def fail(self, path: str, value: Any, reason: str) -> typing.NoReturn:
        origin = next((o for k, o in self.origins.items() if _related(path, k)), self.source)
        shown = repr(value) if not isinstance(value, (dict, list)) else _kind(value)
        raise ConfigError(f"{path} = {shown} ({origin}): {reason}")

    def build(self, cls: type, tree: Any, path: str, default: Any = None) -> Any:
        variants = _dataclass_variants(cls)
        if tree is None and default is not None:
            return default
        if not isinstance(tree, dict):
            self.fail(path or "config", tree, "must be a mapping of keys to values")
        if len(variants) > 1:
            cls = self._pick_variant(variants, tree, path, default)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in tree:
            if key not in fields:
                self._unknown(str(key), f"{path}." if path else "", list(fields))
        kwargs = {}
        for key, value in tree.items():
            sub = f"{path}.{key}" if path else key
            f = fields[key]
            default_value = getattr(cls(), key) if _dataclass_variants(hints[key]) else None
            kwargs[key] = self.value(hints[key], value, sub, f.metadata, default_value)
        if type(default) is cls:  # a partial section keeps its parent's defaults for the rest
            return dataclasses.replace(default, **kwargs)
        return cls(**kwargs)

    def _pick_variant(self, variants: list[type], tree: dict, path: str, default: Any) -> type:
        by_name = {n: v for v in variants for n in names(v)}
        if "name" not in tree:
            return type(default)
        name = tree["name"]
        if name not in by_name:
            self.fail(f"{path}.name", name, self._choices(name, list(by_name)))
        return by_name[name]

    def _unknown(self, key: str, prefix: str, siblings: list[str]) -> typing.NoReturn:
        full = prefix + key
        everywhere = _all_paths(Config)
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
        elsewhere = [p for p in everywhere if p.rsplit(".", 1)[-1] == key and p != full]
        if full in everywhere:  # a key of another variant, e.g. model.channels on an mlp
            hint = f"; it belongs to another '{prefix.rstrip('.')}' variant (see its 'name')."
        elif close:
            hint = f"; did you mean '{prefix}{close[0]}'?"
        elif elsewhere:
            hint = f"; did you mean '{elsewhere[0]}'?"
        else:
            hint = "."
        valid = ", ".join(siblings)
        origin = next((o for k, o in self.origins.items() if k == full), self.source)
        raise ConfigError(f"unknown key '{full}' ({origin}){hint} Valid keys here: {valid}")

    @staticmethod
    def _choices(value: Any, choices: list) -> str:
        msg = "must be one of " + ", ".join(str(c) for c in choices)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        return msg + (f" (did you mean '{close[0]}'?)" if close else "")

    def value(self, tp: Any, value: Any, path: str, meta: dict, default: Any = None) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if _dataclass_variants(tp):
            return self.build(tp, value, path, default)
        if origin in (Union, types.UnionType):  # Optional[X]
            if value is None:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.value(inner, value, path, meta)
        if origin is Literal:
            if value not in args:
                self.fail(path, value, self._choices(value, list(args)))
            return value
        if origin is list:
            if not isinstance(value, (list, tuple)):
                self.fail(path, value, f"must be a list, got {_kind(value)}")
            return [self.value(args[0], v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, value, "must be true or false")
            return value
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                self.fail(path, value, "must be a string")
            return str(value)
        if tp in (int, float):
            return self._number(tp, value, path, meta)
        raise TypeError(f"config type {tp} of {path} is not supported")  # a bug in this file

    def _number(self, tp: type, value: Any, path: str, meta: dict) -> float:
        # PyYAML reads 3e-4 (no dot) as a string, so numeric strings are accepted.
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                self.fail(path, value, f"must be {'an integer' if tp is int else 'a number'}")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            self.fail(path, value, f"must be {'an integer' if tp is int else 'a number'}")
        if not math.isfinite(number):
            self.fail(path, value, "must be finite")
        if tp is int:
            if number != int(number):
                self.fail(path, value, "must be an integer")
            number = int(number)
        else:
            number = float(number)
        for key, ok, word in (
            ("gt", lambda b: number > b, ">"),
            ("ge", lambda b: number >= b, ">="),
            ("lt", lambda b: number < b, "<"),
            ("le", lambda b: number <= b, "<="),
        ):
            if key in meta and not ok(meta[key]):
                self.fail(path, value, f"must be {word} {meta[key]}")
        return number


def _check(cfg: Config, b: _Builder) -> None:
    """Rules that involve more than one field."""
    t, o, d = cfg.train, cfg.optim, cfg.data
    if (t.steps is None) == (t.epochs is None):
        b.fail("train.steps", t.steps, "give exactly one of train.steps and train.epochs (set the other to null)")
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        b.fail("optim.nesterov", True, "needs optim.name=sgd and optim.momentum > 0")
    if len(o.betas) != 2:
        b.fail("optim.betas", o.betas, "must hold two numbers")
    for name in t.stop_signals:
        bare = str(name).upper().removeprefix("SIG")
        if not hasattr(signal, f"SIG{bare}") or bare in ("KILL", "STOP"):
            b.fail("train.stop_signals", name, "not a signal that can be caught (e.g. USR1, USR2, TERM, INT)")
    if d.val_fraction + d.test_fraction >= 1:
        b.fail("data.test_fraction", d.test_fraction, "val_fraction + test_fraction must be < 1")
    if d.name in ("synthetic_images", "synthetic_tokens") and d.task == "regression":
        b.fail("data.task", "regression", "needs a table: data.name = csv or synthetic_tabular")
    if d.name == "digits" and (len(set(d.classes)) != len(d.classes) or len(d.classes) == 1):
        b.fail("data.classes", d.classes, "must be [] or at least two different digits")
    if cfg.transfer.head == "keep" and not cfg.transfer.weights:
        b.fail("transfer.head", "keep", "keeps the head of transfer.weights; set transfer.weights")
    c, strategy = cfg.checkpoint, cfg.dist.strategy
    if strategy == "fsdp" and c.format == "file":
        b.fail("checkpoint.format", "file", "dist.strategy=fsdp writes sharded DCP folders: use auto or dcp")
    if strategy == "deepspeed" and (c.format == "dcp" or c.async_save):
        b.fail("checkpoint.format" if c.format == "dcp" else "checkpoint.async_save", c.format if c.format == "dcp"
               else True, "dist.strategy=deepspeed writes DeepSpeed's own checkpoint folders (not DCP)")  # fmt: skip
    if c.async_save and c.format == "file":
        b.fail("checkpoint.async_save", True, "needs checkpoint.format=dcp (or auto): async saves are DCP folders")
    if strategy == "fsdp" and t.precision == "fp16":
        b.fail("train.precision", "fp16", "dist.strategy=fsdp trains in bf16 or fp32 (fp16 needs a sharded scaler)")
