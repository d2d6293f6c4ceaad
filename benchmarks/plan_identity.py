"""Record the plan JSON of every torchvision classifier and every model of the test zoo, or
compare a new recording with an old one (the check that a refactor changed no decision).

    python benchmarks/plan_identity.py record before.json
    python benchmarks/plan_identity.py record after.json
    python benchmarks/plan_identity.py compare before.json after.json

Models are built with random weights from their constructors and configs (seed 0).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def cases():
    """name -> (build, plan keyword arguments)."""
    from hf_zoo import hf_models, torch_models
    from zoo import build, zoo_names

    out = {}
    for name in zoo_names():
        out[f"tv:{name}"] = (lambda name=name: build(name), {})
    for name, make in {**hf_models(), **torch_models()}.items():
        out[f"tf:{name}"] = (make, {})
    out["tf:llama:layers"] = (hf_models()["llama"], {"layers": True})
    out["tf:llama:free"] = (hf_models()["llama"], {"uniform": False})
    for kw in ({"metric": "params"}, {"round_to": 8}, {"round_to": None}, {"criterion": "l1"},
               {"criterion": "lamp"}, {"criterion": "bn_scale"}, {"layers": True}, {"target": 0.3},
               {"ignore": ["layer1"]}, {"min_keep": 4}):
        out["tv:resnet18:" + ",".join(f"{k}={v}" for k, v in kw.items())] = (lambda: build("resnet18"), kw)
    return out


def record(path: str, only: str | None = None) -> None:
    import surgeon

    torch.set_num_threads(2)
    plans = {}
    for name, (make, kw) in cases().items():
        if only and only not in name:
            continue
        model, x = make()
        t0 = time.perf_counter()
        try:
            plans[name] = surgeon.plan(model, x, **{"target": 0.5, **kw}).to_json()
        except Exception as exc:  # noqa: BLE001 - a refusal is part of the record
            plans[name] = f"{type(exc).__name__}: {exc}"
        print(f"{name:50s} {time.perf_counter() - t0:6.2f} s", flush=True)
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(plans, indent=0, sort_keys=True))
    tmp.replace(path)


def _decisions(text: str) -> str:
    """A recorded plan without its model fingerprint (a field newer plans carry; it names the model,
    not a decision), so recordings from before it compare."""
    try:
        d = json.loads(text)
    except ValueError:  # a refusal
        return text
    d.pop("fingerprint", None)
    return json.dumps(d, sort_keys=True)


def compare(a: str, b: str) -> int:
    old, new = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    old, new = {k: _decisions(v) for k, v in old.items()}, {k: _decisions(v) for k, v in new.items()}
    same = [k for k in old if k in new and old[k] == new[k]]
    differ = [k for k in old if k in new and old[k] != new[k]]
    missing = sorted(set(old) ^ set(new))
    for k in differ:
        print(f"DIFFERS {k}")
    for k in missing:
        print(f"ONLY IN ONE {k}")
    print(f"{len(same)} identical, {len(differ)} differ, {len(missing)} in one recording only")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
