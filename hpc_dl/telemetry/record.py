"""The metrics record, defined once: the loop writes it; progress, metrics.jsonl, W&B, the run
summary and the scaling report read these names."""

from typing import TypedDict

PHASES = ("data", "compute", "optimizer", "other")  # one step = data + compute + optimizer + other
PHASE_TIMES = tuple(f"{phase}_s" for phase in PHASES)
RATES = ("samples_per_s", "tokens_per_s")  # the whole job's, all ranks together
STEP_TIMES = ("step_s", *PHASE_TIMES, "comm_s")  # mean seconds per step; comm_s overlaps compute
FLOP_RATES = ("mfu", "mfu_achievable", "tflops_per_device")
THROUGHPUT = (*FLOP_RATES, *RATES, *STEP_TIMES)  # what a run's summary gives as medians over its windows


class Record(TypedDict, total=False):
    split: str  # train, val or test
    step: int
    loss: float
    accuracy: float  # classification and language models
    rmse: float  # regression, in the target's units (loss is the MSE of the standardised target)
    mae: float  # regression, in the target's units
    r2: float | None  # regression, val/test: 1 - SSE/SST about the split's mean (None for a constant target)
    samples: int  # val/test: the samples evaluated
    confusion: list[list[int]]  # test, classification: rows the true class, columns the predicted one
    per_class_accuracy: dict[str, float | None]  # test, classification: each class's recall, by name
    # train records only
    epoch: float
    lr: float
    grad_norm: float
    samples_per_s: float | None
    tokens_per_s: float | None  # language models
    data_s: float
    compute_s: float
    optimizer_s: float
    other_s: float
    step_s: float
    comm_s: float
    tflops_per_device: float  # this rank's model FLOP/s, when the FLOPs could be counted
    mfu: float  # against peak_tflops
    peak_tflops: float
    mfu_achievable: float  # against log.achievable_tflops
    mem_peak_gib: float  # the largest of the ranks' peaks so far: CUDA allocator on GPUs, resident set on the CPU
    ranks: list[dict]  # each rank's times, peak memory and utilisation window (distributed or sampled runs)
    gpu_util_min: float
    gpu_util_max: float
    cpu_percent_min: float
    cpu_percent_max: float
