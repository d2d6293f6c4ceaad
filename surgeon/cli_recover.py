"""``surgeon recover SMALL --data FILE --out PATH``: distil a shrunk model back towards its dense
teacher (see :mod:`surgeon.recover`).

    surgeon shrink mynet.py:build --target 0.5 --out small.pt
    surgeon recover small.pt --data train.pt --out recovered.pt --eval-data test.pt

SMALL is a file written by ``surgeon shrink --out``; the teacher is, by default, the dense model
its factory builds (``--teacher SPEC`` names another). ``--data`` and ``--eval-data`` are read as
``surgeon shrink --data`` reads them (no pickle). The result is saved like ``surgeon shrink
--out`` saves (safetensors weights, the plans and the factory), so ``surgeon export`` and
``surgeon.checkpoint.load`` read it back. ``--checkpoint FILE`` makes the run resumable: run the
same command again after an interruption and it continues where the file says.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .specs import SPEC_HELP, Failure, UsageError, load_data, load_spec, parse_shape

__all__ = ["add_recover", "cmd_recover"]


def add_recover(sub) -> None:
    """Register the ``recover`` verb on the CLI's subparsers ``sub``."""
    p = sub.add_parser("recover", help="distil a shrunk model towards its dense teacher; save it")
    p.add_argument("spec", metavar="SMALL", help="the shrunk model: a file written by surgeon shrink --out "
                   f"(or any SPEC with --teacher: {SPEC_HELP})")
    p.add_argument("--teacher", metavar="SPEC", help="the dense teacher (default: the model SMALL's factory builds)")
    p.add_argument("--data", metavar="FILE", required=True, help="training batches: .pt (weights_only: a list of "
                   "(x, y) pairs, of tensors or of dicts; a dict {'x', 'y'}), .npy or .npz")
    p.add_argument("--out", metavar="PATH", required=True, help="where to save the recovered model (.pt/.safetensors)")
    p.add_argument("--eval-data", metavar="FILE", help="(x, y) batches: report top-1 accuracy before and after")
    p.add_argument("--steps", type=int, help="optimizer steps (default: whole passes over --data, near 2000)")
    p.add_argument("--epochs", type=int, help="passes over --data (instead of --steps)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-3; 5e-5 for Hugging Face models)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the KL term (default 2)")
    p.add_argument("--alpha", type=float, help="weight of distillation against the labels' loss (default 0.5)")
    p.add_argument("--dropout", action="store_true", help="keep the student's dropout on while it trains "
                   "(off by default: the teacher runs without it)")
    p.add_argument("--checkpoint", metavar="FILE", help="write progress here; rerun to resume from it")
    p.add_argument("--input", metavar="SHAPE", help="example input shape, e.g. 1,3,224,224")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--trust-pickle", action="store_true", help="DANGEROUS: load .pt files with full pickle")
    p.set_defaults(run=cmd_recover)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, batches: list) -> float | None:
    pairs = [b for b in batches if isinstance(b, (tuple, list)) and len(b) == 2]
    if not pairs:
        return None
    was = model.training
    model.eval()
    hits = total = 0
    for x, y in pairs:
        out = model(x)
        out = out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)
        hits += int((out.argmax(-1) == y).sum())
        total += y.numel()
    model.train(was)
    return hits / max(total, 1)


def cmd_recover(args: argparse.Namespace, prog) -> int:
    import json

    from . import checkpoint
    from .recover import RecoverConfig, recover_run

    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {out.parent} does not exist; create it first")
    try:
        cfg = RecoverConfig.of(steps=args.steps, epochs=args.epochs, lr=args.lr, temperature=args.temperature,
                               alpha=args.alpha, quiet=args.quiet, seed=args.seed,
                               dropout=args.dropout)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    shape = parse_shape(args.input) if args.input else None
    with prog.step(f"loading {args.spec}"):
        small = load_spec(args.spec, shape, trust_pickle=args.trust_pickle)
    teacher_spec = args.teacher or small.factory
    if teacher_spec is None or (not args.teacher and not small.plans):
        raise UsageError(f"{args.spec} is not a file written by surgeon shrink --out, so it names no dense "
                         "model: pass --teacher SPEC")
    if small.factory is None:
        raise UsageError(f"--out: {args.spec} has no factory to rebuild it from; use a file.py:FUNCTION spec")
    with prog.step(f"building the teacher {teacher_spec}"):
        teacher = load_spec(teacher_spec, shape, trust_pickle=args.trust_pickle).model
    data = load_data(args.data, args.trust_pickle)
    evals = load_data(args.eval_data, args.trust_pickle) if args.eval_data else []
    before = _accuracy(small.model, evals)
    try:
        run = recover_run(small.model, teacher, data, config=cfg, checkpoint=args.checkpoint)
    except (ValueError, RuntimeError) as exc:
        raise Failure(str(exc)) from exc
    with prog.step(f"saving {args.out}"):
        checkpoint.save(run.model.eval(), small.plans, small.factory, args.out, small.shape)
    after, dense = _accuracy(run.model, evals), _accuracy(teacher, evals)
    data_out = {"spec": args.spec, "teacher": teacher_spec, "out": args.out, "steps": run.steps,
                "resumed_from": run.resumed_from, "loss_first": run.losses[0] if run.losses else None,
                "loss_last": run.losses[-1] if run.losses else None, "seconds": round(run.seconds, 2),
                "accuracy_before": before, "accuracy_after": after, "accuracy_teacher": dense}
    text = (f"wrote {args.out}: {run.steps} steps in {run.seconds:.1f}s, loss {data_out['loss_first']:.4f} -> "
            f"{data_out['loss_last']:.4f}")
    if after is not None:
        text += f"; accuracy {before:.4f} -> {after:.4f} (teacher {dense:.4f})"
    print(json.dumps(data_out, indent=1, default=str) if args.json else text)
    return 0
