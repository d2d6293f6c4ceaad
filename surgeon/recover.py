"""Recover a shrunk model's accuracy by distillation from the dense model it came from.

>>> import torch, surgeon
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> dense = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
>>> small = surgeon.shrink(dense, torch.randn(2, 8), target=0.5)
>>> data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(4)]
>>> small = surgeon.recover(small, dense, data, steps=8, quiet=True)
>>> small(torch.randn(2, 8)).shape
torch.Size([2, 3])

The loss of one step is ``alpha * distill + (1 - alpha) * task``:

* ``distill`` compares the student's output with the teacher's on the same batch: KL divergence
  of the temperature-softened logits (times ``T**2``, as Hinton et al.) for outputs that are
  logits (a tensor, ``.logits``), mean squared error for hidden states (``.last_hidden_state``),
  or ``distill="cosine"`` (1 - cosine similarity along the last dim). ``output_fn(output,
  inputs)`` picks another tensor out of both models' outputs (a sentence embedding pooled over
  ``inputs["attention_mask"]``, say).
* ``task`` is the user's loss on batches that have labels (``(inputs, target)`` pairs, dict
  batches with ``labels``): ``loss_fn(output, target)``, by default cross-entropy for integer
  targets (see :mod:`surgeon.criteria._data`). ``alpha`` defaults to 0.5 where there is a task
  loss and is 1 otherwise.

Defaults: AdamW (lr 3e-3, or 5e-5 for a model with a Hugging Face ``.config``; weight decay
0.01), linear warmup over the first 5% of the steps then a cosine decay to zero, gradients
clipped to norm 1, and as many whole passes over ``data`` (1 to 20) as come closest to 2,000
steps. The student trains in place (``small`` is returned, its training flag restored); the
teacher runs in eval mode without gradients (its flag is restored too).

The student's dropout is off while it trains (every ``nn.Dropout``-family module at ``p=0``,
which Hugging Face attention also reads for its attention dropout; the rates are restored
afterwards): the teacher runs without dropout and the loss asks the student to match it, so
dropout only adds noise to that target. On the MiniLM benchmark it is worth as many steps again
(``benchmarks/recover.py``). ``dropout=True`` keeps it, for long runs on little data.

``features=["layer1.0.conv2", ...]`` adds feature matching: each named module's output in the
student is pulled (mean squared error over the teacher's variance, times ``feature_weight``)
towards the teacher's at the channels that survived, which ``plan=`` (the plan that shrank
``small``) says; ``feature_loss="cosine"`` compares them by cosine along the last dimension
instead (every transformer block's hidden state, DistilBERT- and Minitron-style); see
:mod:`surgeon._recover_features`.

``eval_fn(model)`` is called every ``eval_every`` steps and at the end (in eval mode); what it
returns is kept in :attr:`Recovered.evals` and shown on the progress bar. ``checkpoint="file.pt"``
writes the student, the optimizer and the step there atomically every ``checkpoint_every`` steps
and at the end; a later call with the same file resumes from it (read back with
``torch.load(weights_only=True)``), skipping the batches already seen, so a list of batches
replays exactly.

When ``torch.distributed`` is initialised with more than one process (a script launched with
``torchrun``), both models are sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``: every
module of an ``nn.ModuleList``, then the root) over all ranks, and each batch -- the same on every
rank -- is split along its first dimension, one slice per rank; so the trajectory is that of one
process on the whole batch (up to float rounding; BatchNorm statistics are per slice). See
:mod:`surgeon._recover_dist`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _recover_dist as dist_
from ._recover_features import KINDS as FEATURE_KINDS, FeatureMatch
from .criteria._data import DataError, _to, default_loss, device_of, split_batch
from .graph.trace import run_model

__all__ = ["recover", "recover_run", "RecoverConfig", "Recovered", "distill_loss"]

DISTILL = ("auto", "kl", "mse", "cosine")


@dataclass(frozen=True)
class RecoverConfig:
    """The options of :func:`recover`; ``None`` means the documented default."""

    steps: int | None = None  # optimizer steps; None: whole passes over data, near 2,000 steps
    epochs: int | None = None  # passes over data (instead of steps)
    lr: float | None = None  # 3e-3, or 5e-5 for a Hugging Face model
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the steps with a linear warmup
    temperature: float = 2.0
    alpha: float | None = None  # weight of the distillation loss; 0.5 with labels, else 1
    distill: str = "auto"  # "kl" (logits), "mse" (hidden states), "cosine", or "auto"
    grad_clip: float | None = 1.0
    eval_every: int | None = None  # None: five evaluations over the run (with eval_fn)
    checkpoint_every: int | None = None  # None: ten checkpoints over the run (with checkpoint)
    quiet: bool = False
    fsdp: bool | None = None  # None: FSDP2 when torch.distributed runs more than one process
    shuffle: bool = True  # visit a list of batches in a new (seeded) order each pass
    feature_weight: float = 1.0  # weight of the feature-matching loss (with features=...)
    feature_loss: str = "mse"  # "mse" (over the teacher's variance) or "cosine" (along the last dim)
    dropout: bool = False  # keep the student's dropout on while it trains (off by default; see below)
    seed: int = 0

    @classmethod
    def of(cls, **options: Any) -> "RecoverConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"recover() got unknown option(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**options)
        cfg.check()
        return cfg

    def check(self) -> None:
        for name in ("steps", "epochs", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.distill not in DISTILL:
            raise ValueError(f"distill must be one of {DISTILL}, got {self.distill!r}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.temperature <= 0 or (self.lr is not None and self.lr <= 0):
            raise ValueError("temperature and lr must be positive")
        if self.feature_loss not in FEATURE_KINDS:
            raise ValueError(f"feature_loss must be one of {FEATURE_KINDS}, got {self.feature_loss!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")


@dataclass
class Recovered:
    """What :func:`recover_run` did: the student, the loss of every step (averaged over ranks),
    ``(step, eval_fn result)`` pairs, and the step it resumed from (0 for a fresh run)."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, Any]] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def recover(small: nn.Module, teacher: nn.Module, data: Iterable, *, loss_fn: Callable | None = None,
            output_fn: Callable | None = None, eval_fn: Callable | None = None,
            checkpoint: str | Path | None = None, features: Sequence[str] = (), plan: Any = None,
            config: RecoverConfig | None = None, **options: Any) -> nn.Module:
    """Train ``small`` towards ``teacher`` on ``data`` and return it (trained in place).

    ``data`` is an iterable of batches as the data-aware criteria take them (tensors,
    ``(inputs, target)`` pairs, dicts of keyword arguments), iterated once per pass. The
    options (``steps``, ``lr``, ``temperature``, ``alpha``, ``distill``, ``quiet``, ...) are the
    fields of :class:`RecoverConfig`; see the module docstring for what each step does.
    """
    return recover_run(small, teacher, data, loss_fn=loss_fn, output_fn=output_fn, eval_fn=eval_fn,
                       checkpoint=checkpoint, features=features, plan=plan, config=config, **options).model


def recover_run(small: nn.Module, teacher: nn.Module, data: Iterable, *, loss_fn: Callable | None = None,
                output_fn: Callable | None = None, eval_fn: Callable | None = None,
                checkpoint: str | Path | None = None, features: Sequence[str] = (), plan: Any = None,
                config: RecoverConfig | None = None, **options: Any) -> Recovered:
    """:func:`recover`, returning the whole :class:`Recovered` record (losses, evaluations)."""
    for arg, m in (("small", small), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(m).__name__}")
    if isinstance(data, (torch.Tensor, dict)) or not isinstance(data, Iterable):
        raise DataError(f"data must be an iterable of batches (a DataLoader or a list), got {type(data).__name__}")
    cfg = replace(config, **options) if config is not None else RecoverConfig.of(**options)
    cfg.check()
    steps = _total_steps(cfg, data)
    cfg = replace(cfg, lr=cfg.lr if cfg.lr is not None else (5e-5 if hasattr(small, "config") else 3e-3))
    was_training, teacher_was_training = small.training, teacher.training
    t0 = time.perf_counter()
    ctx = dist_.Context.start(small, teacher, cfg.fsdp)
    loop = _Loop(ctx, cfg, steps, loss_fn, output_fn)
    if features:
        loop.features = FeatureMatch(ctx.student, ctx.teacher, features, plan, cfg.feature_loss)
    result = Recovered(ctx.student, steps=steps)
    rates = {} if cfg.dropout else _dropout_off(ctx.student)
    try:
        if checkpoint is not None and Path(checkpoint).exists():
            result.resumed_from = ctx.load(checkpoint, loop.opt, steps)
            result.losses = ctx.loaded_losses
        _run(loop, data, result, eval_fn, checkpoint)
    finally:
        ctx.student.train(was_training)
        ctx.teacher.train(teacher_was_training)
        for m, p in rates.items():
            m.p = p
        loop.opt.zero_grad(set_to_none=True)  # no gradients left on the returned model
        if loop.features is not None:
            loop.features.close()
    result.seconds = time.perf_counter() - t0
    return result


def _dropout_off(model: nn.Module) -> dict[nn.Module, float]:
    """Set every dropout module's rate to 0; the rates it had, to restore."""
    rates = {m: m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p}
    for m in rates:
        m.p = 0.0
    return rates


def _total_steps(cfg: RecoverConfig, data: Iterable) -> int:
    if cfg.steps is not None:
        return cfg.steps
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError("data has no len() (a generator?): pass steps=N to say how long to train") from None
    if n == 0:
        raise DataError("data holds no batches; pass at least one batch")
    epochs = cfg.epochs or max(1, min(20, round(2000 / n)))
    return n * epochs


def _endless(data: Iterable, skip: int, shuffle: bool, seed: int) -> Iterator[Any]:
    """Batches of ``data``, pass after pass, after skipping the first ``skip`` of that stream; a
    list (any sequence) is visited in a new order each pass, seeded by ``seed`` and the pass."""
    seen, epoch = 0, 0
    while True:
        if shuffle and isinstance(data, Sequence) and len(data) > 1:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(data), generator=g).tolist()
            passing: Iterable = (data[i] for i in order)
        else:
            passing = data
        empty = True
        for batch in passing:
            empty = False
            if seen >= skip:
                yield batch
            seen += 1
        epoch += 1
        if empty:
            raise DataError("data yielded no batches (an empty list, or a generator already consumed); "
                            "pass a list or a DataLoader, which can be iterated more than once")


def _run(loop: "_Loop", data: Iterable, result: Recovered, eval_fn, checkpoint) -> None:
    cfg, steps = loop.cfg, loop.steps
    every_eval = cfg.eval_every or max(1, steps // 5)
    every_ckpt = cfg.checkpoint_every or max(1, steps // 10)
    bar = _Bar(steps, result.resumed_from, quiet=cfg.quiet or not loop.ctx.is_main)
    batches = _endless(data, result.resumed_from, cfg.shuffle, cfg.seed)
    try:
        for step in range(result.resumed_from, steps):
            loss = loop.step(next(batches), step)
            result.losses.append(loss)
            done = step + 1
            if eval_fn is not None and (done % every_eval == 0 or done == steps):
                result.evals.append((done, loop.evaluate(eval_fn)))
                bar.note(result.evals[-1][1])
            if checkpoint is not None and (done % every_ckpt == 0 or done == steps):
                loop.ctx.save(checkpoint, loop.opt, done, steps, result.losses)
            bar.update(loss)
    finally:
        bar.close()


class _Loop:
    """One optimizer step at a time: forward both models, mix the losses, step AdamW."""

    def __init__(self, ctx: "dist_.Context", cfg: RecoverConfig, steps: int, loss_fn, output_fn):
        self.ctx, self.cfg, self.steps, self.loss_fn, self.output_fn = ctx, cfg, steps, loss_fn, output_fn
        params = [p for p in ctx.student.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the student has no trainable parameters (all requires_grad=False)")
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.warm = int(round(cfg.warmup * steps))
        self.features: FeatureMatch | None = None
        ctx.teacher.eval()

    def lr_at(self, step: int) -> float:
        if step < self.warm:
            return self.cfg.lr * (step + 1) / self.warm
        span = max(1, self.steps - self.warm)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - self.warm) / span))

    def step(self, batch: Any, step: int) -> float:
        student, ctx = self.ctx.student, self.ctx
        b = split_batch(ctx.local(batch), step)
        inputs = _to(b.inputs, device_of(student))
        with torch.no_grad():
            t_out = run_model(ctx.teacher, inputs)
        student.train()
        s_out = run_model(student, inputs)
        loss = self.loss(s_out, t_out, b, inputs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"recover: the loss at step {step} is {loss.item()}; lower lr "
                                     f"(now {self.cfg.lr}) or check the data for NaN/inf")
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return ctx.mean(loss.detach())

    def loss(self, s_out: Any, t_out: Any, b, inputs: Any) -> torch.Tensor:
        s, s_kind = _view(s_out, self.output_fn, inputs)
        t, _ = _view(t_out, self.output_fn, inputs)
        mode = self.cfg.distill if self.cfg.distill != "auto" else ("mse" if s_kind == "hidden" else "kl")
        d = distill_loss(s, t.detach(), mode, self.cfg.temperature)
        task = self.task(s_out, b)
        if task is not None:
            alpha = 0.5 if self.cfg.alpha is None else self.cfg.alpha
            d = alpha * d + (1 - alpha) * task
        if self.features is not None:
            d = d + self.cfg.feature_weight * self.features.loss()
        return d

    def task(self, s_out: Any, b) -> torch.Tensor | None:
        labelled = b.has_target and (not isinstance(b.target, dict) or "labels" in b.target)
        if (not labelled and self.loss_fn is None) or self.cfg.alpha == 1.0:
            return None
        target = _to(b.target, device_of(self.ctx.student))
        return (self.loss_fn or default_loss)(s_out, target)

    def evaluate(self, eval_fn: Callable) -> Any:
        student = self.ctx.student
        student.eval()
        try:
            return eval_fn(student)
        finally:
            student.train()


def _view(output: Any, output_fn: Callable | None, inputs: Any) -> tuple[torch.Tensor, str]:
    """The tensor to distill out of a model output, and whether it is logits or hidden states."""
    if output_fn is not None:
        return output_fn(output, inputs), "custom"
    if isinstance(output, torch.Tensor):
        return output, "logits"
    for key, kind in (("logits", "logits"), ("last_hidden_state", "hidden")):
        got = getattr(output, key, None)
        if got is None and isinstance(output, dict):
            got = output.get(key)
        if isinstance(got, torch.Tensor):
            return got, kind
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], "logits"
    raise DataError(f"recover: cannot find logits or hidden states in the model output "
                    f"({type(output).__name__}); pass output_fn=lambda output, inputs: <tensor to distill>")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str = "kl",
                 temperature: float = 2.0) -> torch.Tensor:
    """The distillation loss between two outputs of the same shape.

    >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
    >>> float(distill_loss(t, t)) == 0.0, float(distill_loss(s, t)) > 0
    (True, True)
    """
    if student.shape != teacher.shape:
        raise DataError(f"recover: the student's output {tuple(student.shape)} does not match the teacher's "
                        f"{tuple(teacher.shape)}; distill outputs the shrink kept whole (logits, or hidden "
                        f"states when the hidden size was not pruned), or pass output_fn= to pick them")
    s, t = student.float(), teacher.float()
    if mode == "kl":
        n = s.shape[-1]
        s_log = F.log_softmax(s.reshape(-1, n) / temperature, -1)
        t_log = F.log_softmax(t.reshape(-1, n) / temperature, -1)
        return F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temperature ** 2
    if mode == "mse":
        return F.mse_loss(s, t)
    if mode == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    raise ValueError(f"unknown distill mode {mode!r}; use one of {DISTILL[1:]}")


class _Bar:
    """tqdm when installed, else one plain line rewritten in place; nothing when quiet."""

    def __init__(self, total: int, start: int, quiet: bool, desc: str = "recover", unit: str = "step",
                 label: str = "loss"):
        self.quiet, self.total, self.n, self.extra, self.t0 = quiet, total, start, "", time.perf_counter()
        self.desc, self.label = desc, label
        self.tqdm = None
        if quiet:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.tqdm = tqdm(total=total, initial=start, desc=desc, unit=unit, file=sys.stderr)

    def note(self, value: Any) -> None:
        self.extra = f"eval {value:.4f}" if isinstance(value, float) else f"eval {value}"

    def update(self, loss: float) -> None:
        self.n += 1
        if self.quiet:
            return
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(f"{self.label} {loss:.4f} {self.extra}".strip(), refresh=False)
            self.tqdm.update(1)
        elif self.n == self.total or self.n % max(1, self.total // 50) == 0:
            sys.stderr.write(f"\r{self.desc} {self.n}/{self.total} {self.label} {loss:.4f} {self.extra} "
                             f"{time.perf_counter() - self.t0:.0f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif not self.quiet:
            sys.stderr.write("\n")
