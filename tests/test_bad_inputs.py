"""Bad inputs are refused early and clearly, and a refusal leaves the user's model as it was.

NaN or inf calibration data for ``compensate=True`` (and non-finite activations or refits), a
custom criterion whose scores are not one finite number per unit, a latency cache file that is
not one (ignored with a warning, rebuilt), and a model on the meta device.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.compensate import CalibrationError, RefitError, compensate
from surgeon.criteria import DataError, MetaDeviceError, ScoreError, check_not_meta
from surgeon.errors import SurgeonError
from surgeon.latency.table import TableCache
from surgeon.verify import count_flops


# -- the user's model is unchanged --------------------------------------------------------------
def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    return state, ids


def _assert_unchanged(model: nn.Module, snap: tuple[dict, dict]) -> None:
    state, ids = snap
    now = model.state_dict()
    assert list(now) == list(state), "the model gained or lost parameters or buffers"
    for k, v in now.items():
        assert v.shape == state[k].shape, f"{k} changed shape"
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, equal_nan=True, msg=f"{k} changed")
    assert {n: id(p) for n, p in model.named_parameters()} == ids, "a parameter was replaced"


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


X = torch.randn(1, 3, 16, 16)


# -- compensate: non-finite calibration data, activations and refits --------------------------------
def _batches(bad: float, form: str) -> list:
    good, worse = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    worse[2, 1, 3, 3] = bad
    if form == "tuple":
        return [(good, torch.zeros(4, dtype=torch.long)), (worse, torch.zeros(4, dtype=torch.long))]
    return [good, worse]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("form", ["tensor", "tuple"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_calibration_batch_is_refused(bad, form, inplace):
    m = _cnn()
    snap = _snapshot(m)
    with pytest.raises(CalibrationError) as info:
        surgeon.shrink(m, X, 0.5, compensate=True, data=_batches(bad, form), inplace=inplace)
    assert isinstance(info.value, SurgeonError) and isinstance(info.value, DataError)
    msg = str(info.value)
    assert "batch 1" in msg and "NaN or inf" in msg and "nan_to_num" in msg
    _assert_unchanged(m, snap)


class _Exp(nn.Module):
    """A linear layer, exp, a linear layer: finite inputs far from zero overflow in between."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.exp(self.fc1(x)))


def _planned(model: nn.Module, x: torch.Tensor):
    p = surgeon.plan(model, x, 0.5)
    return p, surgeon.apply(model, p)


def test_non_finite_activation_is_refused_with_the_layer():
    torch.manual_seed(0)
    m, x = _Exp().eval(), torch.randn(4, 8)
    p, small = _planned(m, x)
    snap, snap_small = _snapshot(m), _snapshot(small)
    with pytest.raises(CalibrationError, match=r"module 'fc2' on calibration batch 0") as info:
        compensate(m, small, p, data=[x * 1e4], example_input=x)
    assert "float32" in str(info.value)
    _assert_unchanged(m, snap)
    _assert_unchanged(small, snap_small)


def test_non_finite_refit_is_never_written(monkeypatch):
    from surgeon import compensate as comp

    m = _cnn()
    p, small = _planned(m, X)
    snap, snap_small = _snapshot(m), _snapshot(small)
    solve = comp._Normal.solve
    monkeypatch.setattr(comp._Normal, "solve", lambda self, prior, ridge: solve(self, prior, ridge) * float("nan"))
    with pytest.raises(RefitError, match=r"module '\d+' came out non-finite .*nothing was written"):
        compensate(m, small, p, data=[torch.randn(8, 3, 16, 16)], example_input=X)
    _assert_unchanged(m, snap)
    _assert_unchanged(small, snap_small)  # every layer put back, those refitted before included


def test_non_finite_data_free_fold_is_refused():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 4)).eval()  # linear in between: UDFC folds
    x = torch.randn(4, 8)
    p, small = _planned(m, x)
    removed = [i for i in range(32) if i not in p.slices[0].keep][0]
    with torch.no_grad():
        m[1].weight[0, removed] = float("nan")  # only the original's removed column: the fold reads it
    snap, snap_small = _snapshot(m), _snapshot(small)
    with pytest.raises(RefitError, match=r"data-free.*module '1'.*weights for NaN/inf"):
        compensate(m, small, p, example_input=x)
    _assert_unchanged(m, snap)
    _assert_unchanged(small, snap_small)


def test_finite_calibration_data_still_compensates():
    m = _cnn()
    small = surgeon.shrink(m, X, 0.5, compensate=True, data=[torch.randn(8, 3, 16, 16)])
    assert all(torch.isfinite(t).all() for t in small.state_dict().values())
    assert torch.isfinite(small(X)).all()


def test_data_aware_criterion_refuses_non_finite_batch():
    m = _cnn()
    snap = _snapshot(m)
    data = [(b, torch.zeros(4, dtype=torch.long)) for b in _batches(float("nan"), "tensor")]
    with pytest.raises(DataError, match=r"criterion 'taylor': batch 1 of data holds NaN or inf"):
        surgeon.shrink(m, X, 0.5, criterion="taylor", data=data)
    _assert_unchanged(m, snap)


# -- criteria: one finite score per unit, per group ----------------------------------------------
def _crit(name: str, fn, per_group: bool = False):
    return type("Custom", (), {"name": name, "per_group": per_group,
                               "score": lambda self, model, gs: fn(gs)})()


BAD_SCORES = {
    "wrong length": (lambda gs: [np.zeros(g.n_units + 1) for g in gs], "1-D array of"),
    "nan": (lambda gs: [np.full(g.n_units, np.nan) for g in gs], "non-finite"),
    "-inf": (lambda gs: [np.r_[np.ones(g.n_units - 1), -np.inf] for g in gs], "non-finite"),
    "2-d": (lambda gs: [np.ones((g.n_units, 1)) for g in gs], "1-D array of"),
    "strings": (lambda gs: [np.array(["a"] * g.n_units) for g in gs], "non-numeric"),
    "objects": (lambda gs: [[object()] * g.n_units for g in gs], "non-numeric"),
    "none": (lambda gs: [None for g in gs], "non-numeric"),
}


@pytest.mark.parametrize("per_group", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_SCORES))
def test_bad_scores_name_the_criterion_and_the_group(case, per_group):
    m = _cnn()
    snap = _snapshot(m)
    fn, says = BAD_SCORES[case]
    a = surgeon.analyze(m, X)
    groups = [g for g in a.groups if g.prunable] if per_group else list(a.groups)
    g0 = groups[0]
    tensor = sorted({t.name for t in g0.tensors})[0]
    for call in (surgeon.plan, surgeon.shrink):
        with pytest.raises(ScoreError) as info:
            call(m, X, 0.5, criterion=_crit(f"my-{case}", fn, per_group))
        assert isinstance(info.value, SurgeonError) and isinstance(info.value, ValueError)
        msg = str(info.value)
        assert f"criterion 'my-{case}'" in msg and f"group {g0.id} ({tensor}" in msg and says in msg, msg
    _assert_unchanged(m, snap)


@pytest.mark.parametrize("per_group", [False, True])
@pytest.mark.parametrize("out, says", [([], "returned 0 score arrays"), (None, "got a NoneType"),
                                       (np.zeros(3), "got a ndarray"), ("many", "score arrays for")])
def test_wrong_number_of_arrays_is_refused(out, says, per_group):
    m = _cnn()
    snap = _snapshot(m)
    fn = (lambda gs: [np.ones(g.n_units) for g in gs] * 2) if isinstance(out, str) else (lambda gs: out)
    with pytest.raises(ScoreError, match="criterion 'short'") as info:
        surgeon.shrink(m, X, 0.5, criterion=_crit("short", fn, per_group), inplace=True)
    assert says in str(info.value) and "one array per group" in str(info.value)
    _assert_unchanged(m, snap)


def test_scores_in_any_numeric_form_are_accepted():
    """Tensors, integer arrays, lists and tuples of them: all are one number per unit."""
    forms = [lambda gs: [torch.arange(g.n_units, dtype=torch.float32) for g in gs],
             lambda gs: tuple(np.arange(g.n_units) for g in gs),
             lambda gs: [list(range(g.n_units)) for g in gs]]
    for fn in forms:
        m = _cnn()
        small = surgeon.shrink(m, X, 0.5, criterion=_crit("ok", fn))
        assert count_flops(small, X) < count_flops(m, X)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_builtin_criterion_on_inf_weights_is_refused():
    m = _cnn()
    with torch.no_grad():
        m[3].weight[5] = float("inf")
    snap = _snapshot(m)
    with pytest.raises(ScoreError, match=r"criterion 'l2'.*non-finite.*model's weights"):
        surgeon.plan(m, X, 0.5)
    _assert_unchanged(m, snap)


# -- latency cache: a file that is not one is ignored, rebuilt and rewritten atomically -------------
from fakes import fake  # noqa: E402,F401 - the analytic backend, as in test_latency


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()


def _cache_path():
    return TableCache("ort-cpu", "fake machine").path


def _good_cache(fake) -> str:
    surgeon.plan(_small_net(), X, 0.5, runtime="ort-cpu")
    return _cache_path().read_text()


CORRUPT = {
    "array": lambda good: "[]",
    "tables not an object": lambda good: '{"machine": "fake machine", "tables": []}',
    "malformed table": lambda good: json.dumps({"machine": "fake machine",
                                                "tables": {"k": {"step": 8, "out_w": [], "ms": "x"}}}),
    "nan latency": lambda good: good.replace("]]", ", NaN]]", 1),
    "truncated": lambda good: good[: len(good) // 2],
    "binary": lambda good: "\x00\xff garbage",
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_bad_cache_file_is_ignored_and_rebuilt(fake, case):
    good = _good_cache(fake)
    timed = fake.timed
    path = _cache_path()
    path.write_text(CORRUPT[case](good))
    m = _small_net()
    snap = _snapshot(m)
    with pytest.warns(RuntimeWarning, match="latency cache file .* is ignored") as rec:
        p = surgeon.plan(m, X, 0.5, runtime="ort-cpu")
    assert any(str(path) in str(w.message) for w in rec)
    assert abs(p.ratio - 0.5) < 0.05 and fake.timed == 2 * timed  # re-measured
    _assert_unchanged(m, snap)
    assert json.loads(path.read_text()) == json.loads(good)  # rewritten whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surgeon.shrink(_small_net(), X, 0.5, runtime="ort-cpu")  # read back: no warning, nothing timed
    assert fake.timed == 2 * timed


def test_cache_of_another_machine_is_ignored_without_warning(fake):
    good = json.loads(_good_cache(fake))
    good["machine"] = "another machine"
    _cache_path().write_text(json.dumps(good))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surgeon.plan(_small_net(), X, 0.5, runtime="ort-cpu")


def test_cache_write_is_atomic(fake, monkeypatch):
    good = _good_cache(fake)
    path = _cache_path()
    cache = TableCache("ort-cpu", "fake machine")
    cache.tables["extra"] = dict(next(iter(cache.tables.values())))

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("surgeon._atomic.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.save()
    assert path.read_text() == good, "a failed write touched the cache file"
    assert [f.name for f in path.parent.iterdir()] == [path.name], "a temporary file was left behind"


# -- a model on the meta device ---------------------------------------------------------------------
def _meta_net() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()


@pytest.mark.parametrize("call", ["plan", "shrink"])
def test_meta_model_is_refused_at_the_boundary(call):
    m = _meta_net()
    ids = {n: id(p) for n, p in m.named_parameters()}
    with pytest.raises(MetaDeviceError) as info:
        getattr(surgeon, call)(m, torch.empty(1, 3, 16, 16, device="meta"), 0.5)
    assert isinstance(info.value, SurgeonError) and isinstance(info.value, NotImplementedError)
    msg = str(info.value)
    assert "parameter '0.weight'" in msg and "meta device" in msg and "sharded" in msg
    assert "to_empty(device='cpu')" in msg and "load_state_dict" in msg
    assert {n: id(p) for n, p in m.named_parameters()} == ids
    assert all(p.is_meta for p in m.parameters())


def test_meta_buffer_and_meta_input_are_refused():
    m = nn.BatchNorm2d(4)
    m.register_buffer("running_mean", torch.empty(4, device="meta"))
    with pytest.raises(MetaDeviceError, match="buffer 'running_mean'"):
        check_not_meta(m)
    with pytest.raises(MetaDeviceError, match="example_input is on the meta device"):
        check_not_meta(nn.Linear(4, 2), {"x": [torch.empty(1, 4, device="meta")]})
    check_not_meta(nn.Linear(4, 2), torch.randn(1, 4))  # a real model and input pass
