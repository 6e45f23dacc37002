"""`hpc-dl train` with the configured model wrapped so that, on rank BAD_RANK at step BAD_STEP, its
gradient turns NaN while its loss stays finite: one extra parameter z enters the output as
0 * sqrt(z + c), which is 0 in the forward pass; with c = 0 its derivative is 0 * inf = NaN.
Run by test_named_causes.py under torchrun (or alone for one process)."""

import os
import sys

import torch
from torch import nn

from hpc_dl import models
from hpc_dl.cli import main

BAD_RANK, BAD_STEP = int(os.environ["BAD_RANK"]), int(os.environ["BAD_STEP"])


class Poisoned(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.z, self.steps = inner, nn.Parameter(torch.zeros(1)), 0

    def forward(self, x):
        self.steps += self.training
        bad = self.training and self.steps == BAD_STEP and int(os.environ.get("RANK", "0")) == BAD_RANK
        return self.inner(x) + 0 * torch.sqrt(self.z + (0.0 if bad else 1.0)).sum()


build = models.build
models.build = lambda *args, **kwargs: Poisoned(build(*args, **kwargs))
sys.exit(main(sys.argv[1:]))
