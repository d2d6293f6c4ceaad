"""Shrink the torchvision zoo to half its FLOPs with surgeon and with Torch-Pruning (DepGraph).

For every classification model of ``torchvision.models`` except the seven largest (random
weights, input 1x3x224x224, 299 for inception_v3) this runs, interleaved per model and each in a
fresh subprocess with one thread:

* ours:   ``surgeon.shrink(model, x, target=0.5)``;
* theirs: Torch-Pruning's ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)``, local (not
  global) pruning, the final classifier in ``ignored_layers`` (named by hand, as its users must),
  at the channel pruning ratio found by a bisection search (each step a fresh deepcopy) whose
  FLOPs land closest to 0.5 of the original.

Each result is checked: it runs, keeps the output shape, keeps 0.50 +- 0.01 of the FLOPs (by
``surgeon.verify.count_flops``) and the input model is unchanged. The time ratio ours/theirs uses
Torch-Pruning's single-run time (one graph build + prune at the final ratio), not its search.
Both are timed warm: Torch-Pruning's single run comes after its search ran on the same model
(so one-off costs such as oneDNN kernel set-up for each layer shape are paid), and ours after
one untimed ``shrink`` of the same model. Each engine's time is the median of ``--repeats``
runs (default 3; Torch-Pruning's on a fresh deepcopy each, the copy not timed).

    PYTHONPATH=. python benchmarks/zoo.py [--models a,b] [--repeats 3] [--peer-timeout 120] [--no-peer]
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LARGEST = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf",
           "regnet_x_32gf"}
# the final classifier of each family, as a Torch-Pruning user names it in ignored_layers
HEADS = [("alexnet", "classifier.6"), ("vgg", "classifier.6"), ("convnext", "classifier.2"),
         ("densenet", "classifier"), ("efficientnet", "classifier.1"), ("maxvit", "classifier.5"),
         ("mnasnet", "classifier.1"), ("mobilenet_v2", "classifier.1"),
         ("mobilenet_v3", "classifier.3"), ("squeezenet", "classifier.1"), ("swin", "head"),
         ("vit", "heads.head"), ("googlenet", "fc"), ("inception", "fc"), ("regnet", "fc"),
         ("resnet", "fc"), ("resnext", "fc"), ("wide_resnet", "fc"), ("shufflenet", "fc")]
TARGET, TOL = 0.5, 0.01
RESULT = "RESULT "


class StepTimeout(Exception):
    pass


class StepError(Exception):
    """A Torch-Pruning failure at one pruning ratio of the search."""

    def __init__(self, ratio: float, exc: Exception, tried: int = 1):
        where = f"r={ratio:.4f}" if tried == 1 else f"all {tried} ratios tried, first r={ratio:.4f}"
        super().__init__(f"at {where}: {short(exc)}")


# ----------------------------------------------------------------------------- shared helpers

def zoo_names() -> list[str]:
    import torchvision

    return [m for m in torchvision.models.list_models(module=torchvision.models) if m not in LARGEST]


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


def head_of(name: str, model: torch.nn.Module) -> torch.nn.Module:
    path = next(p for prefix, p in HEADS if name.startswith(prefix))
    return model.get_submodule(path)


def snapshot(model: torch.nn.Module) -> tuple[str, dict]:
    return repr(model), {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model: torch.nn.Module, snap: tuple[str, dict]) -> bool:
    text, state = snap
    now = model.state_dict()
    return (repr(model) == text and now.keys() == state.keys()
            and all(now[k].shape == v.shape and torch.equal(now[k], v) for k, v in state.items()))


def shape_of(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    from surgeon.verify import output_shapes

    return output_shapes(model, x)


def check(model, snap, small, x, base: int, shape) -> tuple[bool, str, float | None]:
    """(pass, reason, FLOPs ratio) of a pruned ``small`` against the original ``model``."""
    from surgeon.verify import count_flops

    try:
        got_shape = shape_of(small, x)
        ratio = count_flops(small, x) / base
    except Exception as exc:  # noqa: BLE001 - a failure to run is a result
        return False, f"does not run: {short(exc)}", None
    if got_shape != shape:
        return False, f"output shape {shape} -> {got_shape}", ratio
    if not unchanged(model, snap):
        return False, "input model modified", ratio
    if abs(ratio - TARGET) > TOL:
        return False, f"flops {ratio:.3f}", ratio
    return True, f"flops {ratio:.3f}", ratio


def short(exc: BaseException, n: int = 120) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:n]}"


def warm_up(engine: str) -> None:
    """Run the engine once on a tiny net so that one-off import and dispatch costs are not timed."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 4)).eval()
    x = torch.randn(1, 3, 16, 16)
    if engine == "ours":
        import surgeon

        surgeon.shrink(net, x, target=0.5)
    else:
        tp_prune(net, x, 0.3, [net[4]])


# ----------------------------------------------------------------------------- the two engines

def run_ours(name: str, repeats: int = 1) -> dict:
    import surgeon
    from surgeon.verify import count_flops

    model, x = build(name)
    snap, shape, base = snapshot(model), shape_of(model, x), count_flops(model, x)
    try:  # once untimed: Torch-Pruning's timed run also comes after its search warmed this model up
        surgeon.shrink(model, x, target=TARGET)
    except Exception:  # noqa: BLE001 - reported by the timed run below
        pass
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            small = surgeon.shrink(model, x, target=TARGET)
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "reason": f"error: {short(exc)}", "time": None}
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    ok, reason, ratio = check(model, snap, small, x, base, shape)
    return {"ok": ok, "reason": reason, "time": seconds, "flops": ratio}


def tp_prune(model, x, ratio: float, ignored: list, **options) -> tuple[torch.nn.Module, float]:
    """Prune a deepcopy of ``model`` with Torch-Pruning; the time covers graph build + step.
    ``options`` go to the pruner as they are (``round_to=8``)."""
    import torch_pruning as tp

    net = copy.deepcopy(model)
    ignored = [net.get_submodule(n) for n, m in model.named_modules() if m in ignored]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(net, x, tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False, **options)
    pruner.step()
    return net, time.perf_counter() - t0


def _alarm(_signum, _frame):
    raise StepTimeout


def timed_step(fn, limit: float):
    """``fn()`` under a wall-clock limit (SIGALRM), raising StepTimeout past it."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def tp_search(model, x, base: int, ignored: list, steps: int, limit: float, **options) -> tuple[float, float]:
    """Bisection on the channel pruning ratio in [0, 0.9]; returns (best ratio, search seconds).

    A ratio at which Torch-Pruning raises (or whose result does not run) counts as too high, so
    a failure that only happens at large ratios does not sink the model; the first error is
    raised only when no ratio worked. A step past ``limit`` seconds ends the search.
    """
    from surgeon.verify import count_flops

    lo, hi, best, first_error, t0 = 0.0, 0.9, None, None, time.perf_counter()
    for _ in range(steps):
        mid = (lo + hi) / 2
        try:
            net, _ = timed_step(lambda r=mid: tp_prune(model, x, r, ignored, **options), limit)
            got = count_flops(net, x) / base
        except StepTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the ratio that failed
            first_error = first_error or (mid, exc)
            hi = mid
            continue
        if best is None or abs(got - TARGET) < best[1]:
            best = (mid, abs(got - TARGET))
        lo, hi = (mid, hi) if got > TARGET else (lo, mid)
    if best is None:
        raise StepError(*first_error, tried=steps)
    return best[0], time.perf_counter() - t0


def run_theirs(name: str, steps: int, limit: float, repeats: int = 1) -> dict:
    from surgeon.verify import count_flops

    model, x = build(name)
    snap, shape, base = snapshot(model), shape_of(model, x), count_flops(model, x)
    ignored = [head_of(name, model)]
    try:
        ratio, search = tp_search(model, x, base, ignored, steps, limit)
        singles = []
        for _ in range(repeats):
            net, single = timed_step(lambda: tp_prune(model, x, ratio, ignored), limit)
            singles.append(single)
        single = statistics.median(singles)
    except StepTimeout:
        return {"ok": False, "reason": f"timeout >{limit:g}s", "time": None}
    except StepError as exc:
        return {"ok": False, "reason": f"error {exc}", "time": None}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "reason": f"error: {short(exc)}", "time": None}
    ok, reason, flops = check(model, snap, net, x, base, shape)
    return {"ok": ok, "reason": f"{reason} @r={ratio:.4f}", "time": single, "search": search,
            "flops": flops}


# ----------------------------------------------------------------------------- orchestration

def worker(args) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    warm_up(args.worker)
    name = args.models
    res = run_ours(name, args.repeats) if args.worker == "ours" else run_theirs(
        name, args.tp_steps, args.peer_timeout, args.repeats)
    print(RESULT + json.dumps(res), flush=True)


def spawn(engine: str, name: str, args, limit: float) -> dict:
    """Run one engine on one model in a fresh interpreter; a hard wall-clock backstop of ``limit``."""
    cmd = [sys.executable, __file__, "--worker", engine, "--models", name,
           "--peer-timeout", str(args.peer_timeout), "--tp-steps", str(args.tp_steps),
           "--repeats", str(args.repeats)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"timeout >{limit:g}s", "time": None}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:90]
    return {"ok": False, "reason": f"crashed rc={proc.returncode}: {tail}", "time": None}


def fmt_time(t: float | None) -> str:
    return "-" if t is None else f"{t:.2f}"


def verdict(res: dict | None) -> tuple[str, str]:
    if res is None:
        return "skip", ""
    return ("PASS" if res["ok"] else "FAIL"), res["reason"]


HEADER = (f"{'model':20s} {'ours':4s} {'ours_s':>7s} {'TP':4s} {'TP_1run_s':>9s} "
          f"{'TP_search_s':>11s} {'ours/TP':>7s} | ours: reason | TP: reason")


def row_line(name: str, ours: dict, theirs: dict | None) -> str:
    (ov, oreason), (tv, treason) = verdict(ours), verdict(theirs)
    ratio = ours.get("ratio")
    single = None if theirs is None else theirs["time"]
    search = None if theirs is None else theirs.get("search")
    return (f"{name:20s} {ov:4s} {fmt_time(ours['time']):>7s} {tv:4s} {fmt_time(single):>9s} "
            f"{fmt_time(search):>11s} {'-' if ratio is None else f'{ratio:.2f}':>7s} | "
            f"ours: {oreason} | TP: {treason}")


def summarize(rows: list[tuple[str, dict, dict | None]], peer: bool) -> None:
    n = len(rows)
    ours_ok = [name for name, o, _ in rows if o["ok"]]
    print(f"\nsurgeon passes {len(ours_ok)}/{n}")
    if not peer:
        return
    tp_ok = [name for name, _, t in rows if t["ok"]]
    ratios = [o["ratio"] for _, o, _ in rows if o.get("ratio") is not None]
    print(f"Torch-Pruning passes {len(tp_ok)}/{n}")
    only_ours = [x for x in ours_ok if x not in tp_ok]
    only_tp = [x for x in tp_ok if x not in ours_ok]
    print(f"we pass, TP fails ({len(only_ours)}): {', '.join(only_ours) or '-'}")
    print(f"TP passes, we fail ({len(only_tp)}): {', '.join(only_tp) or '-'}")
    med = f"{statistics.median(ratios):.2f}" if ratios else "-"
    print(f"median time ratio ours/TP-single-run: {med} over {len(ratios)} models where both "
          f"produced a model (TP single run = one graph build + prune at the final ratio)")


def run_all(names: list[str], args) -> list:
    rows = []
    backstop = args.peer_timeout * (args.tp_steps + 1) + 120
    for i, name in enumerate(names):
        engines = ["ours", "theirs"] if not args.no_peer else ["ours"]
        if i % 2:
            engines.reverse()
        got = {e: spawn(e, name, args, args.ours_timeout if e == "ours" else backstop)
               for e in engines}
        ours, theirs = got["ours"], got.get("theirs")
        if theirs and ours["time"] and theirs["time"]:
            ours["ratio"] = ours["time"] / theirs["time"]
        print(row_line(name, ours, theirs), flush=True)
        rows.append((name, ours, theirs))
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated subset of the zoo (default: all but the 7 largest)")
    ap.add_argument("--peer-timeout", type=float, default=120.0,
                    help="seconds allowed for one Torch-Pruning build+prune; past it the model "
                         "counts as a Torch-Pruning fail (default 120)")
    ap.add_argument("--no-peer", action="store_true", help="run surgeon only")
    ap.add_argument("--tp-steps", type=int, default=10, help="bisection steps for Torch-Pruning's ratio")
    ap.add_argument("--ours-timeout", type=float, default=900.0,
                    help="backstop seconds for one surgeon run (default 900)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per engine and model (median; default 3): one run is noisy "
                         "on a shared machine")
    ap.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    names = args.models.split(",") if args.models else zoo_names()
    print(f"{len(names)} models, target {TARGET} +- {TOL} of FLOPs, 1 thread, engines interleaved; "
          f"TP: local GroupMagnitudeImportance(p=2), classifier ignored, {args.tp_steps}-step "
          f"bisection, --peer-timeout {args.peer_timeout:g}s per build+prune\n"
          f"times (median of {args.repeats} runs each): ours = surgeon.shrink (incl. its own "
          f"checks); TP single = one graph build + prune at the final ratio; TP search = whole "
          f"bisection; ratio = ours / TP single\n",
          flush=True)
    print(HEADER, flush=True)
    summarize(run_all(names, args), peer=not args.no_peer)


if __name__ == "__main__":
    main()
