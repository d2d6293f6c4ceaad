"""Plans are untrusted input (issue 13, item 5).

``Plan.from_dict`` checks every field's type and every keep run against its slice's size before
expanding anything (/work/shared/repros/plan_huge_run.py), and ``surgeon.apply`` checks a plan
against the model before touching or copying it (/work/shared/repros/plan_duplicates.py): keep
indices, sizes, dims, attribute names and values, config fields, dropped layers and the model's
fingerprint. A refused plan leaves the model exactly as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import doctest
import json
import tracemalloc

import pytest
import torch
from torch import nn

import surgeon
from surgeon.planning import plan as plan_module
from surgeon.planning.plan import AttrUpdate, Plan, Slice, fingerprint_of


class Mixer(nn.Module):
    """Reshapes by its own int attribute ``hidden`` (fixed by the width probes) and has a LayerNorm
    without weights (its tuple ``normalized_shape`` is fixed by the rules): plans that set attributes."""

    def __init__(self):
        super().__init__()
        self.hidden = 32
        self.up = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32, elementwise_affine=False)
        self.down = nn.Linear(32, 4)

    def forward(self, x):
        h = self.norm(self.up(x).reshape(x.shape[0], -1, self.hidden))
        return self.down(torch.relu(h)).flatten(1)


def _conv():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    return m, torch.randn(1, 3, 16, 16)


def _plan(model, x) -> Plan:
    """A genuine plan, with the model's fingerprint (whether or not build_plan records it yet)."""
    p = surgeon.plan(model, x, 0.5, round_to=None)
    return dataclasses.replace(p, fingerprint=fingerprint_of(model))


@pytest.fixture
def conv():
    m, x = _conv()
    return m, x, _plan(m, x)


def _snapshot(model: nn.Module) -> tuple:
    """Everything a refused apply must leave alone: tensors (values and identity), ints, children."""
    tensors = {k: (id(v), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {n: {k: v for k, v in vars(m).items() if isinstance(v, (int, tuple))} for n, m in model.named_modules()}
    return tensors, attrs, [n for n, _ in model.named_modules()]


def _assert_unchanged(model: nn.Module, snap: tuple) -> None:
    tensors, attrs, names = _snapshot(model)
    assert tensors.keys() == snap[0].keys() and attrs == snap[1] and names == snap[2]
    for k, (ident, value) in snap[0].items():
        assert tensors[k][0] == ident and torch.equal(tensors[k][1], value), k


# ---- Plan.from_dict: structure and types, before anything is expanded ----------------------------
def _dict(p: Plan) -> dict:
    return json.loads(p.to_json())


def _first_wide(d: dict) -> dict:
    return next(s for s in d["slices"] if s["size"] == 16)


def test_repro_duplicated_index_is_refused_by_from_dict(conv):
    _, _, p = conv
    d = _dict(p)
    for s in d["slices"]:  # the repro: one index appended to every keep list of the 16-wide group
        if s["size"] == 16:
            s["keep"] = s["keep"] + [[s["keep"][0][0], s["keep"][0][0] + 1]]
    with pytest.raises(surgeon.PlanError, match=r"slices\[\d+\]\.keep\[\d+\]' \(tensor '[\w.]+'\) starts at .* "
                                                r"sorted and must not overlap"):
        Plan.from_dict(d)


@pytest.mark.parametrize("keep, problem", [
    ([[4, 6], [0, 2]], "sorted and must not overlap"),
    ([[0, 4], [2, 6]], "sorted and must not overlap"),
    ([[-1, 3]], r"\[-1, 3\], outside 0 <= start < stop <= 16"),
    ([[10, 17]], r"\[10, 17\], outside 0 <= start < stop <= 16"),
    ([[3, 3]], r"\[3, 3\], outside"),
    ([], "is empty"),
    ([[0, 1.5]], "must be a run"),
    ([[0, 1, 2]], "must be a run"),
    ([["0", "3"]], "must be a run"),
    ([[True, 3]], "must be a run"),
    ("0-8", "must be a list"),
])
def test_bad_keep_runs_are_refused(conv, keep, problem):
    d = _dict(conv[2])
    s = _first_wide(d)
    s["keep"] = keep
    with pytest.raises(surgeon.PlanError, match=problem) as info:
        Plan.from_dict(d)
    assert f"(tensor '{s['tensor']}')" in str(info.value) and "build it again with surgeon.plan" in str(info.value)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_repro_huge_run_is_refused_before_any_allocation(conv):
    d = _dict(conv[2])
    d["slices"][0]["keep"] = [[0, 10 ** 9]]  # the repro: 21.8 GB before

    def read():
        with pytest.raises(surgeon.PlanError, match=r"\[0, 1000000000\], outside 0 <= start < stop <= "):
            Plan.from_dict(d)
    assert _peak_bytes(read) < 50 * 2 ** 20


def test_huge_size_with_a_matching_run_is_refused_too(conv):
    d = _dict(conv[2])
    s = d["slices"][0]
    s["size"], s["keep"] = 10 ** 9, [[0, 10 ** 9]]
    with pytest.raises(surgeon.PlanError, match="the plan's shapes give dim"):  # the shapes disagree
        Plan.from_dict(d)
    d["shapes"] = [e for e in d["shapes"] if e[0] != s["tensor"]]  # no shape to disagree with

    def read():
        with pytest.raises(surgeon.PlanError, match=r"keeps 1,000,000,\d+ indices in all, more than the"):
            Plan.from_dict(d)
    assert _peak_bytes(read) < 50 * 2 ** 20


@pytest.mark.parametrize("edit, field, problem", [
    (lambda d: d["slices"][0].update(dim="0"), r"slices\[0\]\.dim", "must be an integer"),
    (lambda d: d["slices"][0].update(size=16.0), r"slices\[0\]\.size", "must be an integer"),
    (lambda d: d["slices"][0].update(tensor=7), r"slices\[0\]\.tensor", "must be a string"),
    (lambda d: d["slices"][0].update(extra=1), r"slices\[0\]", "unknown key"),
    (lambda d: d["slices"][0].pop("keep"), r"slices\[0\]", "lacks the key 'keep'"),
    (lambda d: d.update(slices={"a": 1}), "slices", "must be a list"),
    (lambda d: d.update(target="half"), "target", "must be a finite number"),
    (lambda d: d.update(target=float("nan")), "target", "must be a finite number"),
    (lambda d: d.update(cost_before=10 ** 400), "cost_before", "must be a finite number"),
    (lambda d: d.update(round_to="eight"), "round_to", "must be an integer"),
    (lambda d: d.update(model=None), "model", "must be a string"),
    (lambda d: d.update(fingerprint=12), "fingerprint", "must be a string"),
    (lambda d: d.update(attrs=[{"module": "0", "attr": "x", "old": "16", "new": 8}]), r"attrs\[0\]\.old",
     "must be an integer"),
    (lambda d: d.update(attrs=[{"module": "0", "attr": "x", "old": 16}]), r"attrs\[0\]", "lacks the key 'new'"),
    (lambda d: d.update(config=[{"module": "config", "attr": "x", "old": 1, "new": {}}]), r"config\[0\]\.new",
     "must be an integer"),
    (lambda d: d["decisions"][0].update(units="zzz"), r"decisions\[0\]\.units", "must be an integer"),
    (lambda d: d["decisions"][0].update(tensors="0.weight"), r"decisions\[0\]\.tensors", "must be a list"),
    (lambda d: d.update(shapes=[["0.weight"]]), r"shapes\[0\]", "must be a pair"),
    (lambda d: d.update(shapes=[["0.weight", [16, -3]]]), r"shapes\[0\]\[1\]\[1\]", "at least 0"),
    (lambda d: d.update(extra=[[1, 2]]), r"extra\[0\]\[0\]", "must be a string"),
    (lambda d: d.update(drops=[0]), r"drops\[0\]", "must be a string"),
    (lambda d: d.update(surprise=1), "surprise", "is not a field of a plan"),
    (lambda d: d.pop("metric"), "metric", "is missing"),
])
def test_malformed_fields_are_refused_naming_the_field(conv, edit, field, problem):
    d = _dict(conv[2])
    edit(d)
    with pytest.raises(surgeon.PlanError, match=f"plan field '{field}'.*{problem}"):
        Plan.from_dict(d)


def test_malformed_documents_are_refused():
    with pytest.raises(surgeon.PlanError, match="must be a JSON object"):
        Plan.from_json("[1, 2]")
    with pytest.raises(surgeon.PlanError, match="must be JSON text"):
        Plan.from_json("{not json")
    with pytest.raises(surgeon.PlanError, match="unsupported plan format"):
        Plan.from_dict({"format": 99})


def test_plans_without_a_fingerprint_still_load_and_apply(conv):
    m, x, p = conv
    d = _dict(p)
    del d["fingerprint"]
    q = Plan.from_dict(d)
    assert q.fingerprint is None and q == dataclasses.replace(p, fingerprint=None)
    assert surgeon.apply(m, q)(x).shape == m(x).shape


def test_from_dict_example():
    result = doctest.testmod(plan_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---- apply: the plan against the model, before the model is touched -------------------------------
def _with_slice(p: Plan, **change) -> Plan:
    """``p`` with its first 16-wide slice changed."""
    i = next(i for i, s in enumerate(p.slices) if s.size == 16)
    slices = list(p.slices)
    slices[i] = dataclasses.replace(slices[i], **change)
    return dataclasses.replace(p, slices=tuple(slices))


@pytest.mark.parametrize("change, problem", [
    (lambda s: dict(keep=s.keep + (s.keep[0],)), "is not sorted"),
    (lambda s: dict(keep=(s.keep[0],) + s.keep), r"holds the index \d+ twice"),
    (lambda s: dict(keep=tuple(reversed(s.keep))), "is not sorted"),
    (lambda s: dict(keep=(-1,) + s.keep[1:]), "holds the negative index -1"),
    (lambda s: dict(keep=s.keep[:-1] + (16,)), "holds the index 16, out of range"),
    (lambda s: dict(keep=()), "is empty"),
    (lambda s: dict(keep=tuple(range(17))), "more than the dim has"),
    (lambda s: dict(keep=(0.0, 1.0)), "not integers"),
    (lambda s: dict(size=17), "the plan says that dim has size 17, the tensor has 16"),
    (lambda s: dict(dim=5), "the tensor has no such dim"),
    (lambda s: dict(dim=-1), "the tensor has no such dim"),
    (lambda s: dict(tensor="0.nothing"), "which is no parameter or buffer"),
    (lambda s: dict(tensor="9.weight"), "the model has no module '9'"),
    (lambda s: dict(tensor="0.__class__"), "which is no parameter or buffer"),
])
@pytest.mark.parametrize("inplace", [False, True])
def test_bad_slices_are_refused_and_the_model_is_untouched(conv, change, problem, inplace):
    m, _, p = conv
    s = next(s for s in p.slices if s.size == 16)
    bad = _with_slice(p, **change(s))
    snap = _snapshot(m)
    with pytest.raises(surgeon.PlanError, match=problem) as info:
        surgeon.apply(m, bad, inplace=inplace)
    assert "surgeon.plan" in str(info.value)
    _assert_unchanged(m, snap)


def test_a_dim_sliced_twice_is_refused(conv):
    m, _, p = conv
    p2 = dataclasses.replace(p, slices=p.slices + p.slices[:1])
    with pytest.raises(surgeon.PlanError, match="already slices that dim"):
        surgeon.apply(m, p2)


def test_tied_names_sliced_differently_are_refused():
    m = nn.Sequential(nn.Linear(4, 8), nn.Linear(4, 8))
    m[1].weight = m[0].weight
    p = Plan("Sequential", 1.0, "flops", "manual", None, 1.0, 1.0,
             slices=(Slice("0.weight", 0, 8, (0, 1, 2)), Slice("1.weight", 0, 8, (0, 1, 3))))
    with pytest.raises(surgeon.PlanError, match="are one tied tensor, but the plan slices them differently"):
        surgeon.apply(m, p)


@pytest.mark.parametrize("attr, old, new, problem", [
    ("forward", 16, 8, "holds no attribute of its own"),
    ("__class__", 16, 8, "private or special"),
    ("_parameters", 16, 8, "private or special"),
    ("training", False, True, "a flag or a position"),
    ("training", 1, 0, "a flag or a position"),
    ("padding_mode", "zeros", "circular", "holds a str, not an integer width"),
    ("weight", 16, 8, "holds no attribute of its own"),
    ("out_channels", 15, 8, "expects it to hold 15, the module holds 16"),
    ("out_channels", 16, 17, "not a positive integer width no larger than 16"),
    ("out_channels", 16, 0, "not a positive integer width"),
    ("out_channels", 16, True, "not a positive integer width"),
    ("kernel_size", [3, 3], [3, 4], "no larger than"),
    ("kernel_size", [3, 3], [3], "not a list of as many integers"),
    ("not an identifier", 1, 1, "not an attribute name"),
])
@pytest.mark.parametrize("inplace", [False, True])
def test_attributes_outside_the_width_rule_are_refused(conv, attr, old, new, problem, inplace):
    m, _, p = conv
    bad = dataclasses.replace(p, attrs=p.attrs + (AttrUpdate("0", attr, old, new),))
    snap = _snapshot(m)
    with pytest.raises(surgeon.PlanError, match=problem):
        surgeon.apply(m, bad, inplace=inplace)
    _assert_unchanged(m, snap)
    assert type(m) is nn.Sequential and m.training is False


def test_attribute_updates_of_missing_modules_or_conflicting_twice_are_refused(conv):
    m, _, p = conv
    with pytest.raises(surgeon.PlanError, match="no module 'nope'"):
        surgeon.apply(m, dataclasses.replace(p, attrs=(AttrUpdate("nope", "x", 1, 1),)))
    twice = (AttrUpdate("0", "out_channels", 16, 8), AttrUpdate("0", "out_channels", 16, 4))
    with pytest.raises(surgeon.PlanError, match="an earlier update sets it to 8"):
        surgeon.apply(m, dataclasses.replace(p, attrs=twice))


class WithConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("TinyConfig", (), {})()
        self.config.hidden_size, self.config.layer_types = 16, ["a", "b"]
        self.layers = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("update, problem", [
    (AttrUpdate("config", "hidden_size", 32, 8), "the plan expects 32, the config holds 16"),
    (AttrUpdate("config", "vocab", 16, 8), "has no integer or list field"),
    (AttrUpdate("config", "__class__", 16, 8), "not a public config field"),
    (AttrUpdate("config", "hidden_size", 16, -2), "does not fit"),
    (AttrUpdate("layers", "hidden_size", 16, 8), "only updates fields of the model's 'config'"),
    (AttrUpdate("__class__", "hidden_size", 16, 8), "only updates fields of the model's 'config'"),
])
def test_config_updates_are_checked(update, problem):
    m = WithConfig()
    p = Plan("WithConfig", 1.0, "flops", "manual", None, 1.0, 1.0, config=(update,), fingerprint=fingerprint_of(m))
    with pytest.raises(surgeon.PlanError, match=problem):
        surgeon.apply(m, p, inplace=True)
    assert m.config.hidden_size == 16
    good = dataclasses.replace(p, config=(AttrUpdate("config", "hidden_size", 16, 8),
                                          AttrUpdate("config", "layer_types", ["a", "b"], ["a"])))
    assert surgeon.apply(m, good).config.hidden_size == 8 and m.config.hidden_size == 16
    with pytest.raises(surgeon.PlanError, match="the model has no config"):
        surgeon.apply(nn.Linear(2, 2), dataclasses.replace(good, fingerprint=None))


@pytest.mark.parametrize("drops, problem", [
    (("layers.5",), "has no layer '5'"),
    (("config.0",), "is no ModuleList or Sequential"),
    (("layers.0", "layers.0"), "drops 'layers.0' twice"),
])
def test_drops_are_checked(drops, problem):
    m = WithConfig()
    p = Plan("WithConfig", 1.0, "flops", "manual", None, 1.0, 1.0, drops=drops)
    with pytest.raises(surgeon.PlanError, match=problem):
        surgeon.apply(m, p, inplace=True)
    assert len(m.layers) == 2
    assert len(surgeon.apply(m, dataclasses.replace(p, drops=("layers.1",))).layers) == 1


# ---- fingerprint ----------------------------------------------------------------------------------
def test_fingerprint_covers_class_names_and_shapes_not_values():
    m, _ = _conv()
    fp = fingerprint_of(m)
    assert fingerprint_of(copy.deepcopy(m)) == fp
    other = copy.deepcopy(m)
    with torch.no_grad():
        other[0].weight.mul_(2)
    assert fingerprint_of(other.double()) == fp
    other.register_buffer("extra", torch.zeros(1))
    assert fingerprint_of(other) != fp
    assert fingerprint_of(nn.ModuleList(list(m))) != fp  # same tensors, another class


@pytest.mark.parametrize("inplace", [False, True])
def test_wrong_fingerprint_is_refused(conv, inplace):
    m, _, p = conv
    twin = copy.deepcopy(m)
    twin.register_buffer("step", torch.zeros(()))  # every sliced tensor as planned, yet another model
    snap = _snapshot(twin)
    with pytest.raises(surgeon.PlanError, match="made for another model.*build a new plan for this model"):
        surgeon.apply(twin, p, inplace=inplace)
    _assert_unchanged(twin, snap)
    with pytest.raises(surgeon.PlanError, match="made for another model"):
        surgeon.apply(m, dataclasses.replace(p, fingerprint="0" * 32))


# ---- genuine plans -----------------------------------------------------------------------------------
def _grouped():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4), nn.ReLU(), nn.Conv2d(16, 8, 1))
    return m.eval(), torch.randn(1, 3, 16, 16)


@pytest.mark.parametrize("make", [_conv, _grouped, lambda: (Mixer().eval(), torch.randn(2, 3, 16))])
def test_genuine_plan_round_trips_through_json_and_applies(make, tmp_path):
    m, x = make()
    p = _plan(m, x)
    p.save(tmp_path / "plan.json")
    assert not list(tmp_path.glob(".*.part"))  # written atomically
    q = Plan.load(tmp_path / "plan.json")
    assert q == p and q.fingerprint == fingerprint_of(m)
    small, direct = surgeon.apply(m, q), surgeon.apply(m, p)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), direct.state_dict().values()))
    with torch.no_grad():
        assert small(x).shape == m(x).shape
    assert surgeon.apply(copy.deepcopy(m), q, inplace=True)(x).shape == m(x).shape


def test_mixer_plan_sets_user_and_tuple_width_attributes():
    m, x = Mixer().eval(), torch.randn(2, 3, 16)
    p = Plan.from_json(_plan(m, x).to_json())
    assert {(a.module, a.attr) for a in p.attrs} == {("", "hidden"), ("norm", "normalized_shape")}
    small = surgeon.apply(m, p)
    assert small.hidden < 32 and small.norm.normalized_shape == (small.hidden,)
