"""Where :func:`surgeon.recover` runs: one process, or FSDP2 over the ranks of ``torch.distributed``.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is used as PyTorch ships it; nothing here
distributes anything itself. Under it each rank holds a shard of every parameter and of the
optimizer state; a batch (the same on every rank) is split along its first dimension so that
rank ``r`` computes slice ``r``, and FSDP's gradient reduction averages the slices' gradients,
which is the gradient of the whole batch. Checkpoints hold full (unsharded) state dicts, written
by rank 0 and read by every rank, so a checkpoint from a run on any number of processes resumes
on any other number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._atomic import atomic_path

__all__ = ["Context", "full_state_dict", "FORMAT"]

FORMAT = "surgeon-recover/1"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _shard(model: nn.Module, mesh) -> nn.Module:
    """``fully_shard`` every module of an ``nn.ModuleList`` (transformer blocks, typically), then
    the root; a model without one is sharded as one unit."""
    from torch.distributed.fsdp import fully_shard

    for lst in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in lst:
            if any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@dataclass
class Context:
    student: nn.Module
    teacher: nn.Module
    sharded: bool = False
    rank: int = 0
    world: int = 1
    loaded_losses: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, student: nn.Module, teacher: nn.Module, fsdp: bool | None) -> "Context":
        if fsdp is False or (fsdp is None and not _distributed()):
            return cls(student, teacher)
        if not _distributed():
            raise RuntimeError("recover(fsdp=True) needs torch.distributed initialised with more than one "
                               "process: launch with `torchrun --nproc-per-node N script.py` and call "
                               "torch.distributed.init_process_group() first")
        from torch.distributed.device_mesh import init_device_mesh

        world, rank = dist.get_world_size(), dist.get_rank()
        if torch.cuda.is_available() and dist.get_backend() != "gloo":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
            torch.cuda.set_device(device)
            student.to(device)
            teacher.to(device)
            kind = "cuda"
        else:
            kind = "cpu"
        mesh = init_device_mesh(kind, (world,))
        for p in teacher.parameters():
            p.requires_grad_(False)
        return cls(_shard(student, mesh), _shard(teacher, mesh), True, rank, world)

    def local(self, batch: Any) -> Any:
        """This rank's slice of a batch (every tensor split along dim 0); the batch when unsharded."""
        if not self.sharded:
            return batch
        if isinstance(batch, torch.Tensor):
            if batch.dim() == 0:
                return batch
            if batch.shape[0] < self.world:
                raise ValueError(f"recover under FSDP splits each batch over {self.world} ranks, but a batch "
                                 f"holds only {batch.shape[0]} example(s); use batches of at least {self.world}")
            return batch.tensor_split(self.world, dim=0)[self.rank]
        if isinstance(batch, dict):
            return {k: self.local(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.local(v) for v in batch)
        return batch

    def mean(self, loss: torch.Tensor) -> float:
        if self.sharded:
            loss = loss.clone()
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            loss = loss / self.world
        return float(loss)

    def save(self, path: str | Path, opt: torch.optim.Optimizer, step: int, steps: int, losses: list) -> None:
        # the state_dict API of torch.distributed.checkpoint in both modes: parameters and optimizer
        # state keyed by parameter name, so a checkpoint resumes on any number of processes
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_sd, opt_sd = get_state_dict(self.student, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=self.sharded))
        if self.is_main:
            state = {"format": FORMAT, "step": step, "steps": steps, "losses": [float(x) for x in losses],
                     "model": model_sd, "optimizer": opt_sd}
            with atomic_path(path, suffix=".pt") as tmp:
                torch.save(state, tmp)
        if self.sharded:
            dist.barrier()

    def load(self, path: str | Path, opt: torch.optim.Optimizer, steps: int) -> int:
        """Restore the student and optimizer from ``path``; return the step it was written at."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a recover checkpoint ({FORMAT}); remove it or pass another "
                             f"checkpoint= path")
        if state["steps"] != steps:
            raise ValueError(f"{path} was written by a run of {state['steps']} steps, this one has {steps}; "
                             f"pass steps={state['steps']} to resume it, or another checkpoint= path")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        self.student.zero_grad(set_to_none=True)  # set_state_dict builds the optimizer state only without grads
        set_state_dict(self.student, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.loaded_losses = list(state["losses"])
        return int(state["step"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a model :func:`surgeon.recover` sharded (on CPU, on rank 0; empty
    on the other ranks), or its plain ``state_dict()`` when it was not sharded."""
    if not _distributed():
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
