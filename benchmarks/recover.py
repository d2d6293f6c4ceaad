"""Recovery by distillation (``surgeon.recover``), measured on the two heavier acceptance cases.

* ``fmnist``: the residual CNN of ``benchmarks/compensation.py`` trained for two epochs on 20,000
  Fashion-MNIST images (Debian's ``dataset-fashion-mnist``), shrunk to 0.5 of its FLOPs with
  ``surgeon.shrink`` (l2), then ``surgeon.recover(small, dense, batches)`` on the same training
  images (batches of 128, ``--epochs`` passes, other options at their defaults). Test accuracy on
  all 10,000 test images: dense, shrunk, recovered. Goal: recovered within 0.005 of dense.
* ``minilm``: the pretrained all-MiniLM-L6-v2 of ``benchmarks/minilm_lee.py`` shrunk to 0.5 of its
  FLOPs (l2), then recovered on sentences of the first 200 Lee background documents, distilling
  the pooled sentence embedding (``distill="cosine"``, ``output_fn`` = the package's mean pooling;
  ``--minilm-loss tokens``: the cosine of every real token's last hidden state instead).
  Measured: mean cosine between the shrunk and the dense embedding of every sentence of the other
  100 background documents (held out: never trained on) and of the 50 rated ``lee.cor`` documents,
  before and after recovery. Goal: >= 0.95 after.

    PYTHONPATH=. python benchmarks/recover.py                 # both, ~10 min on one thread
    PYTHONPATH=. python benchmarks/recover.py --only fmnist --epochs 4
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import surgeon  # noqa: E402
from surgeon.recover import recover_run  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402


def fmnist(args) -> dict:
    import compensation as C

    x, y = C.load("train")
    xt, yt = C.load("t10k")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(x), generator=g)[: args.train]
    x, y = x[idx], y[idx]
    t0 = time.perf_counter()
    dense = C.train(args.seed, x, y)
    t_dense = time.perf_counter() - t0
    x1 = x[:1]
    small = surgeon.shrink(dense, x1, target=0.5)
    flops = count_flops(small, x1) / count_flops(dense, x1)
    acc_dense, acc_before = C.accuracy(dense, xt, yt), C.accuracy(small, xt, yt)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + 1))
    batches = [(x[i], y[i]) for i in perm.split(128)]
    run = recover_run(small, dense, batches, epochs=args.epochs, quiet=args.quiet)
    acc_after = C.accuracy(run.model, xt, yt)
    # the recovered model trained 2 + epochs passes in all: the dense model given as many, from scratch
    acc_long = C.accuracy(C.train(args.seed, x, y, epochs=2 + args.epochs), xt, yt) if args.long_dense else None
    row = {"case": "fmnist-rescnn", "flops": flops, "dense": acc_dense, "before": acc_before, "after": acc_after,
           "gap": acc_dense - acc_after, "steps": run.steps, "recover_s": run.seconds, "dense_train_s": t_dense,
           "dense_long": acc_long}
    print(f"Fashion-MNIST ResCNN at {flops:.3f} FLOPs: test accuracy dense {acc_dense:.4f}, shrunk {acc_before:.4f}, "
          f"recovered {acc_after:.4f} (gap {acc_dense - acc_after:+.4f}; goal <= 0.005) after {run.steps} steps "
          f"({args.epochs} epochs of {len(batches)} batches) in {run.seconds:.0f} s", flush=True)
    if acc_long is not None:
        print(f"  reference: the dense model trained {2 + args.epochs} epochs from scratch (as many passes as the "
              f"recovered one saw in all): {acc_long:.4f} (gap to recovered {acc_long - acc_after:+.4f})", flush=True)
    return row


def _sentences(docs: list[str]) -> list[str]:
    out = []
    for d in docs:
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", d) if len(s.split()) >= 4]
    return out


def minilm(args) -> dict:
    import minilm_lee as M

    model, tok = M.load_model()
    lee = M.load_lee()
    train_s = _sentences(lee.background[:200])
    held_s = _sentences(lee.background[200:]) + list(lee.docs)
    x = M.example_input(tok, lee)
    small = surgeon.shrink(model, x, target=0.5)
    flops = count_flops(small, x) / count_flops(model, x)
    dense_held = M.embed(model, tok, held_s)

    def cos(m) -> float:
        return float((M.embed(m, tok, held_s) * dense_held).sum(-1).mean())

    before = cos(small)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train_s), generator=g).tolist()
    batches = [M.tokenize(tok, [train_s[i] for i in order[j:j + 32]]) for j in range(0, len(order), 32)]

    def pooled(output, inputs):
        return M.mean_pool(output.last_hidden_state, inputs["attention_mask"])

    def tokens(output, inputs):  # every real token's hidden state (padding left out)
        return output.last_hidden_state[inputs["attention_mask"].bool()]

    run = recover_run(small, model, batches, epochs=args.epochs, lr=args.lr, distill="cosine",
                      output_fn=tokens if args.minilm_loss == "tokens" else pooled, quiet=args.quiet)
    after = cos(run.model.eval())
    print(f"[distilled: {args.minilm_loss}, lr {args.lr}] all-MiniLM-L6-v2 at {flops:.3f} FLOPs: mean cosine to the dense embeddings on {len(held_s)} held-out "
          f"sentences/docs: shrunk {before:.4f}, recovered {after:.4f} (goal >= 0.95) after {run.steps} steps "
          f"({args.epochs} epochs of {len(batches)} batches of {len(train_s)} training sentences) in "
          f"{run.seconds:.0f} s", flush=True)
    return {"case": "minilm", "flops": flops, "before": before, "after": after, "steps": run.steps,
            "recover_s": run.seconds}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("fmnist", "minilm"))
    ap.add_argument("--epochs", type=int, default=4, help="passes over the training data (default 4)")
    ap.add_argument("--lr", type=float, default=1e-4, help="MiniLM learning rate (default 1e-4)")
    ap.add_argument("--minilm-loss", choices=("pooled", "tokens"), default="pooled",
                    help="distil the pooled sentence embedding, or every token's hidden state (cosine either way)")
    ap.add_argument("--train", type=int, default=20000, help="Fashion-MNIST training images (default 20000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-long-dense", dest="long_dense", action="store_false",
                    help="skip the reference dense model trained as many epochs as the recovered one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a loaded box)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows = []
    if args.only in (None, "fmnist"):
        rows.append(fmnist(args))
    if args.only in (None, "minilm"):
        rows.append(minilm(args))
    return rows


if __name__ == "__main__":
    main()
