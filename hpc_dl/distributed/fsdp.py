"""PyTorch's own sharding (FSDP2, ``torch.distributed.fsdp.fully_shard``) behind the Strategy interface.

As in torchtitan, each repeated block (a transformer block, a residual block) is one FSDP unit
and the root module takes what is left (embeddings, head): during forward and backward one
block's parameters are gathered at a time, so a rank holds 1/N of the model, its gradients and
its optimizer state, plus one block gathered. With bf16 the gathered parameters are bf16 and
gradients are reduce-scattered in fp32. Checkpoints are DCP folders, written by every rank in
parallel, that any number of ranks can load.
"""

import hashlib

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from hpc_dl.distributed.strategy import Strategy
from hpc_dl.errors import ConfigError
from hpc_dl.models.checkpointing import blocks


class FSDP(Strategy):
    name = "fsdp"
    sharded = True

    def __init__(self, dist, device, group, dtype):
        super().__init__(dist, device, group)
        self.dtype = dtype  # autocast dtype: the parameters' compute dtype when it is bf16

    def shard(self, module: nn.Module) -> nn.Module:
        d = self.dist
        if d.fsdp_cpu_offload and self.device.type != "cuda":
            raise ConfigError("dist.fsdp_cpu_offload = true moves GPU state to host memory: it needs a CUDA device")
        options = {
            "reshard_after_forward": d.fsdp_reshard_after_forward,
            "mp_policy": MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
            if self.dtype == torch.bfloat16
            else MixedPrecisionPolicy(),
            "offload_policy": CPUOffloadPolicy() if d.fsdp_cpu_offload else OffloadPolicy(),
        }
        units = blocks(module)
        for block in units:
            fully_shard(block, **options)
        # the root's parameters are gathered first in backward's order anyway: never reshard them after forward
        fully_shard(
            module, **{**options, "reshard_after_forward": False if units else options["reshard_after_forward"]}
        )
        return module

    def no_sync(self, sync: bool):
        """Gradients of a micro-batch that is not the last stay unsharded and accumulate locally:
        one reduce-scatter per optimizer step, not per micro-batch (read in backward, so set, not scoped)."""
        self.module.set_requires_gradient_sync(sync)
        return super().no_sync(sync)

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """The global norm over every rank's shards (as torchtitan computes it), then scale in place."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm(grads, foreach=True)
        if isinstance(norm, DTensor):  # a partial sum over the shards: complete it on every rank
            norm = norm.full_tensor()
        nn.utils.clip_grads_with_norm_(self.module.parameters(), max_norm, norm, foreach=True)
        return norm

    def state_dict(self) -> dict:
        raise NotImplementedError("FSDP checkpoints are DCP folders (sharded_state_dict)")

    def parameter_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for p in self.module.parameters():
            whole = p.full_tensor() if isinstance(p, DTensor) else p  # a collective: every rank calls it
            digest.update(whole.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]
