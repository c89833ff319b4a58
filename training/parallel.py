"""How the trainer spreads one model over its workers: a single process, DDP, or FSDP.

- `ddp`: every worker holds the whole model; gradients are averaged at the last micro-batch of a step.
  Mixed precision by autocast over float32 weights.
- `fsdp`: PyTorch's `fully_shard` (FSDP2) on every decoder layer and vision block and on the root:
  parameters, gradients and optimizer state are sharded; `MixedPrecisionPolicy` computes in bf16/fp16
  and reduces gradients in float32. Checkpoints gather full state dicts (CPU-offloaded, rank 0 writes),
  so a checkpoint is a plain model folder whatever the strategy.
torch.distributed is set up by Ray Train (gloo on CPUs, NCCL on GPUs); without it, one process.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

STRATEGIES = ("ddp", "fsdp")


class Parallel:
    def __init__(self, strategy: str = "ddp") -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        self.fsdp = strategy == "fsdp" and self.dist is not None
        self.compute = "float32"

    def barrier(self) -> None:
        if self.dist:
            self.dist.barrier()

    def sum(self, value: float) -> float:
        if not self.dist:
            return value
        import torch

        tensor = torch.tensor([value], dtype=torch.float64)
        self.dist.all_reduce(tensor)
        return float(tensor.item())

    def wrap(self, net: Any, model: Any, device: Any, compute: str) -> Any:
        """The module to call in training: `net` (the loss wrapper around `model`) under DDP or FSDP."""
        import torch

        self.compute, self.device_type = compute, device.type
        if self.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy() if compute == "float32" else \
                MixedPrecisionPolicy(param_dtype=getattr(torch, compute), reduce_dtype=torch.float32)
            for block in [*model.model.language_model.layers, *model.model.visual.blocks]:
                fully_shard(block, mp_policy=policy)
            return fully_shard(net, mp_policy=policy)
        if self.dist:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        return net

    def micro_step(self, net: Any, last: bool) -> Any:
        """The context of one micro-batch's forward and backward: gradients sync on the last one only;
        autocast unless FSDP's policy already casts."""
        import torch

        stack = contextlib.ExitStack()
        if self.fsdp:
            net.set_requires_gradient_sync(last)
        elif self.dist and not last:
            stack.enter_context(net.no_sync())
        if self.compute != "float32" and not self.fsdp:
            stack.enter_context(torch.autocast(self.device_type, dtype=getattr(torch, self.compute)))
        return stack

    def full_state(self, model: Any, optimizer: Any) -> tuple[dict | None, dict | None]:
        """(model state dict, optimizer state dict), whole, on rank 0 (None elsewhere). Collective."""
        if not self.fsdp:
            return (model.state_dict(), optimizer.state_dict()) if self.rank == 0 else (None, None)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        state = get_optimizer_state_dict(model, optimizer, options=options)
        return (weights, state) if self.rank == 0 else (None, None)

    def load_optimizer(self, model: Any, optimizer: Any, path: Path) -> None:
        import torch

        if not self.fsdp:
            optimizer.load_state_dict(torch.load(path, weights_only=False))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(path, weights_only=False) if self.rank == 0 else {}
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
