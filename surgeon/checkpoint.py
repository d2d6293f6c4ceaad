"""Save a shrunk model without pickle, and load it back.

A checkpoint is one safetensors file. Its tensors are the shrunk model's ``state_dict`` (a tensor
shared under several names is stored once); its metadata holds the factory SPEC that builds the
dense model (``torchvision:NAME``, ``timm:NAME`` or ``/absolute/path/file.py:FUNCTION``), the
plans that shrank it (JSON) and the example input shape, if one was given. :func:`load` calls
the factory, replays the plans with :func:`surgeon.apply` and loads the tensors strictly: no code
is ever read from the file itself, only from the factory, which the user wrote or installed.

    surgeon shrink mynet.py:build --target 0.5 --out small.pt     # the command line, or in Python:

    import surgeon, surgeon.checkpoint
    plan = surgeon.plan(model, x, target=0.5)
    surgeon.checkpoint.save(surgeon.apply(model, plan), plan, "mynet.py:build", "small.pt")
    small, x = surgeon.checkpoint.load("small.pt")                 # build(), apply(plan), load tensors

Hugging Face models are saved with :func:`save_pretrained` into a folder instead, which
``from_pretrained`` reloads.
"""

from ._ckptfile import (CheckpointError, Saved, check_pretrained_dest, factory_spec, is_checkpoint, read,  # noqa: F401
                        save, save_pretrained)
from .specs import load_checkpoint as load

__all__ = ["save", "load", "read", "save_pretrained", "is_checkpoint", "factory_spec", "check_pretrained_dest",
           "CheckpointError", "Saved"]
