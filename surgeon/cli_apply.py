"""``surgeon apply PLAN IN_DIR OUT_DIR``: apply a saved plan to a Hugging Face checkpoint folder
shard by shard, without loading the model (see :mod:`surgeon.sharded.apply`).

    surgeon apply plan.json llama-3b/ llama-3b-small/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import PlanError, SurgeonError
from .specs import Failure, UsageError

__all__ = ["add_apply", "cmd_apply"]


def add_apply(sub) -> None:
    """Register the ``apply`` verb on the CLI's subparsers ``sub``."""
    p = sub.add_parser("apply", help="apply a plan to a checkpoint folder, shard by shard, into a new folder")
    p.add_argument("plan", metavar="PLAN", help="the plan, as JSON (surgeon.plan(...).save, surgeon shrink --plan)")
    p.add_argument("in_dir", metavar="IN_DIR", help="a Hugging Face checkpoint folder: config.json and "
                   "safetensors shards (model.safetensors.index.json), as save_pretrained writes")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the new folder to write (must not exist, or be empty)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=cmd_apply, seed=0, trust_pickle=False)


def cmd_apply(args: argparse.Namespace, progress) -> int:
    from .planning.plan import Plan
    from .sharded.apply import apply_checkpoint

    plan_path, in_dir, out_dir = Path(args.plan), Path(args.in_dir), Path(args.out_dir)
    if not plan_path.is_file():
        raise UsageError(f"plan file {str(plan_path)!r} does not exist")
    if not in_dir.is_dir():
        raise UsageError(f"checkpoint folder {str(in_dir)!r} does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{str(out_dir)!r} exists and is not an empty folder; name a new folder")
    try:
        plan = Plan.load(plan_path)
    except PlanError as exc:
        raise UsageError(f"{plan_path}: {exc}") from exc
    try:
        with progress.step(f"applying the plan to {in_dir} shard by shard"):
            written = apply_checkpoint(plan, in_dir, out_dir)
    except SurgeonError as exc:
        raise Failure(str(exc)) from exc
    if not args.quiet:
        print(f"wrote {out_dir}: {len(written.shards)} shard(s), {written.total_size / 2**20:.1f} MiB of tensors, "
              f"config.json updated")
        print(plan.summary().splitlines()[0])
    return 0
