"""Batches and default losses for the data-aware criteria.

``data`` is an iterable of batches (a DataLoader, a list, a generator). Each batch is one of

* a tensor: the model's input, no target;
* a tuple or list ``(inputs, target)``: ``inputs`` is a tensor, a tuple of tensors (positional
  arguments) or a dict (keyword arguments); elements after the target are ignored, so
  ``(x, y, index)`` batches work; a 1-tuple is inputs only;
* a dict: keyword arguments (Hugging Face style: ``input_ids``, ``attention_mask``, ``labels``...).

A loss function is called as ``loss_fn(output, target)`` with the model's raw output; ``target``
is the second element of an ``(inputs, target)`` batch, or, for a batch that is only inputs (a
tensor or a dict), the batch itself (so ``loss_fn`` can read ``labels`` or ``input_ids``). The
default loss (:func:`default_loss`) covers classification (integer targets: cross-entropy on the
logits), regression (float targets shaped like the output: mean squared error) and causal
language models (dict batches with ``input_ids``: next-token cross-entropy on ``.logits``).

Batches are moved to the device of the model's first parameter. Scoring runs in eval mode and
every module's training flag is restored afterwards.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SurgeonError
from ..graph.trace import eval_mode, run_model

__all__ = ["DataError", "Batch", "Batches", "default_loss", "logits_of", "forward", "loss_of", "non_finite"]

LossFn = Callable[[Any, Any], torch.Tensor]


class DataError(SurgeonError, ValueError):
    """``data`` or ``loss_fn`` given to a data-aware criterion cannot be used."""


def _need_data(name: str) -> str:
    return (f"criterion {name!r} scores units with data: pass data=... (an iterable of batches, e.g. "
            f"a DataLoader or [(x, y), ...]; dict batches for Hugging Face models), as in "
            f"shrink(model, x, criterion={name!r}, data=loader)")


def _describe(obj: Any) -> str:
    """Shapes of the tensors in a batch, for error messages."""
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in obj) + ")"
    return type(obj).__name__


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


class Batch(NamedTuple):
    index: int
    inputs: Any
    target: Any  # the batch itself when it holds inputs only
    has_target: bool  # an (inputs, target) pair or a dict (which may hold labels)


def split_batch(batch: Any, index: int) -> Batch:
    """One batch as inputs and target; see the module docstring for the accepted forms."""
    if isinstance(batch, torch.Tensor):
        return Batch(index, batch, batch, False)
    if isinstance(batch, dict):
        return Batch(index, batch, batch, True)
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        inputs = tuple(batch[0]) if isinstance(batch[0], (tuple, list)) else batch[0]
        if len(batch) == 1:
            return Batch(index, inputs, batch[0], False)
        return Batch(index, inputs, batch[1], True)
    raise DataError(f"batch {index} of data is a {type(batch).__name__}; each batch must be a tensor, "
                    f"a tuple (inputs, target) or a dict of keyword arguments")


class Batches:
    """Validated view of ``data``: checked when built (cheap), iterated when a criterion scores."""

    def __init__(self, data: Any, name: str, max_batches: int | None = None):
        if data is None:
            raise DataError(_need_data(name))
        if isinstance(data, (torch.Tensor, dict)) or not isinstance(data, Iterable):
            raise DataError(f"data must be an iterable of batches (a DataLoader or a list), got a "
                            f"{type(data).__name__}; to score with one batch pass data=[batch]")
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise DataError(f"max_batches must be a positive integer or None, got {max_batches!r}")
        self.data, self.name, self.max_batches = data, name, max_batches

    def __iter__(self) -> Iterator[Batch]:
        """Yield every batch (up to ``max_batches``); raise if ``data`` yields nothing."""
        n = 0
        for n, batch in enumerate(self.data, start=1):
            yield split_batch(batch, n - 1)
            if self.max_batches is not None and n >= self.max_batches:
                break
        if n == 0:
            raise DataError(f"data for criterion {self.name!r} yielded no batches (an empty list or "
                            f"DataLoader, or a generator that was already consumed); pass at least "
                            f"one batch")


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def non_finite(obj: Any, path: str = "the inputs") -> str | None:
    """Where a floating tensor in ``obj`` (a tensor, dict, tuple or list) holds NaN or inf."""
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return f"{path}, {_describe(obj)}"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else ()
    for k, v in items:
        where = non_finite(v, f"{path}[{k!r}]")
        if where is not None:
            return where
    return None


def forward(model: nn.Module, inputs: Any, index: int, name: str) -> Any:
    """Run ``model`` on one batch's inputs; if it rejects them, say where and what it was given.
    Inputs holding NaN or inf are refused: every score would come out NaN."""
    where = non_finite(inputs)
    if where is not None:
        raise DataError(f"criterion {name!r}: batch {index} of data holds NaN or inf (in {where}); "
                        f"drop or clean that batch (e.g. torch.nan_to_num) and pass finite data")
    inputs = _to(inputs, device_of(model))
    try:
        return run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the module that rejected the batch
        raise DataError(_rejected(model, inputs, index, name, exc)) from exc


def run_hooked(model: nn.Module, handles: list, batches: "Batches", name: str) -> None:
    """Run every batch of ``batches`` through ``model`` (eval mode, no autograd) for the hooks whose
    ``handles`` are given, then remove those hooks, whatever the run raised."""
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                forward(model, batch.inputs, batch.index, name)
    finally:
        for h in handles:
            h.remove()


def _rejected(model: nn.Module, inputs: Any, index: int, name: str, exc: Exception) -> str:
    entered: list[tuple[str, nn.Module]] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, _a: entered.append((names[id(mod)], mod)))
             for m in model.modules()]
    try:
        with torch.no_grad():
            run_model(model, inputs)
    except Exception:  # noqa: BLE001 - only where it stopped matters
        pass
    finally:
        for h in hooks:
            h.remove()
    where = ""
    if entered and entered[-1][0]:
        mod_name, mod = entered[-1]
        where = f" in module '{mod_name}' ({_brief(mod)})"
    return (f"criterion {name!r}: the model rejects batch {index} of data{where}: "
            f"{type(exc).__name__}: {exc}. The batch's inputs were {_describe(inputs)}; each batch "
            f"must be what the model takes, like example_input (a tensor, a tuple of tensors or a "
            f"dict of keyword arguments), optionally paired with a target as (inputs, target)")


def _brief(mod: nn.Module) -> str:
    text = repr(mod).splitlines()[0]
    return text if len(text) <= 100 else text[:97] + "..."


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model output: a tensor, ``.logits``, ``["logits"]`` or the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    got = getattr(output, "logits", None)
    if got is None and isinstance(output, dict):
        got = output.get("logits")
    if isinstance(got, torch.Tensor):
        return got
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, torch.Tensor):
                return o
    raise DataError(f"cannot find logits in the model output ({type(output).__name__}); pass "
                    f"loss_fn=lambda output, target: ... to say how to compute the loss")


def _next_token_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    ids = batch["input_ids"]
    labels = batch.get("labels")
    if labels is None:
        labels = ids.clone()
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
    if logits.shape[:-1] != labels.shape:
        raise DataError(f"next-token loss: logits {tuple(logits.shape)} do not match input_ids/labels "
                        f"{tuple(labels.shape)}; pass loss_fn=lambda output, batch: ...")
    shifted = logits[..., :-1, :].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted, labels[..., 1:].reshape(-1).to(logits.device), ignore_index=-100)


def _classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.to(logits.device)
    if not target.is_floating_point() and not target.is_complex():
        if logits.dim() == target.dim() + 1 and logits.shape[:-1] == target.shape and logits.dim() > 2:
            logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)  # class dim last
        return F.cross_entropy(logits.float(), target.long())
    if target.shape == logits.shape:
        return F.mse_loss(logits.float(), target.float())
    raise DataError(f"the default loss needs integer class targets (cross-entropy) or float targets "
                    f"shaped like the output (mean squared error); got output {tuple(logits.shape)} "
                    f"and target {_describe(target)}; pass loss_fn=lambda output, target: ...")


def default_loss(output: Any, target: Any) -> torch.Tensor:
    """Cross-entropy for ``(x, y)`` batches, next-token cross-entropy for dict batches with
    ``input_ids`` (the model's own ``.loss`` when it computed one from ``labels``)."""
    if isinstance(target, dict):
        own = getattr(output, "loss", None)
        if isinstance(own, torch.Tensor) and own.dim() == 0:
            return own
        if "input_ids" in target:
            return _next_token_loss(logits_of(output), target)
        raise DataError(f"dict batches without input_ids have no default loss (keys: {sorted(target)}); "
                        f"pass loss_fn=lambda output, batch: ...")
    if isinstance(target, torch.Tensor):
        return _classification_loss(logits_of(output), target)
    raise DataError(f"no default loss for a target of type {type(target).__name__}; pass "
                    f"loss_fn=lambda output, target: ...")


_INPUTS_ONLY = ("batches are inputs only (no target), so there is no default loss; pass (x, y) "
                "batches, dict batches with input_ids, or loss_fn=lambda output, target: ...")


def loss_of(loss_fn: LossFn | None, model: nn.Module, output: Any, batch: Batch,
            name: str) -> torch.Tensor:
    """The scalar loss of one batch, with the default loss when ``loss_fn`` is None."""
    index = batch.index
    target = _to(batch.target, device_of(model))
    if loss_fn is None:
        if not batch.has_target:
            raise DataError(f"criterion {name!r}: {_INPUTS_ONLY}")
        loss = default_loss(output, target)
    else:
        loss = loss_fn(output, target)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise DataError(f"criterion {name!r}: the loss of batch {index} must be a scalar tensor, got "
                        f"{_describe(loss)}; make loss_fn return e.g. F.cross_entropy(output, target)")
    if not loss.requires_grad:
        raise DataError(f"criterion {name!r}: the loss of batch {index} does not depend on any "
                        f"parameter (no gradient); check loss_fn uses the model output")
    return loss.reshape(())
