"""Criteria: planted units are ranked right, scores match independent computations, the user's
model is left exactly as it was, and bad data gets a clear error.

The planted models are small nets whose hidden units are set by hand:

* unit 0 is *critical*: it alone reads the input feature the label is computed from, and its
  outgoing weights push the logits towards the right class;
* unit LAST is *unimportant*: in the ``zero`` variant all its weights are zero; in the ``dead``
  variant it has the largest weights of all but reads an input feature that is always zero in the
  data, so it never fires (magnitude ranks it first; only the data shows it is useless);
* the other units read noise features with small random weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.criteria import CRITERIA, DataError, combine, get_criterion
from surgeon.criteria.lamp import lamp_scores

HIDDEN = 8
LAST = HIDDEN - 1
DATA_AWARE = ["taylor", "fisher", "activation"]


# -- planted models ----------------------------------------------------------------------------
def _mlp(variant: str, seed: int = 0) -> nn.Module:
    """Linear(6, 8) -> ReLU -> Linear(8, 2); the label is x[:, 0] > 0, feature 5 is always 0."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    w1 = torch.zeros(HIDDEN, 6)
    w1[:, 1:5] = 0.3 * torch.randn(HIDDEN, 4, generator=g)
    b1 = torch.full((HIDDEN,), 0.1)
    w2 = 0.3 * torch.randn(2, HIDDEN, generator=g)
    w1[0], b1[0] = 0.0, 0.0
    w1[0, 0], w2[:, 0] = 1.0, torch.tensor([-2.0, 2.0])
    w1[LAST], b1[LAST], w2[:, LAST] = 0.0, 0.0, 0.0
    if variant == "dead":
        w1[LAST, 5], w2[:, LAST] = 5.0, torch.tensor([5.0, -5.0])
    with torch.no_grad():
        for t, v in ((m[0].weight, w1), (m[0].bias, b1), (m[2].weight, w2), (m[2].bias, torch.tensor([1.0, -1.0]))):
            t.copy_(v)
    return m


def _mlp_data(seed: int = 1, n: int = 4, bs: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 6, generator=g)
        x[:, 5] = 0.0
        out.append((x, (x[:, 0] > 0).long()))
    return out


def _cnn(variant: str, seed: int = 0) -> nn.Module:
    """Conv(3, 8) -> BN -> ReLU -> GAP -> Linear(8, 2); the label is the sign of input channel 0's
    offset, input channel 2 is always 0."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, HIDDEN, 3, padding=1), nn.BatchNorm2d(HIDDEN), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(HIDDEN, 2))
    w = torch.zeros(HIDDEN, 3, 3, 3)
    w[:, 1] = 0.1 * torch.randn(HIDDEN, 3, 3, generator=g)
    beta = torch.full((HIDDEN,), 0.1)
    gamma = torch.ones(HIDDEN)
    lin = 0.3 * torch.randn(2, HIDDEN, generator=g)
    w[0], beta[0], gamma[0] = 0.0, 0.0, 2.0
    w[0, 0], lin[:, 0] = 1.0 / 9, torch.tensor([-2.0, 2.0])
    w[LAST], beta[LAST], lin[:, LAST] = 0.0, 0.0, 0.0
    if variant == "dead":
        w[LAST, 2], lin[:, LAST] = 5.0, torch.tensor([5.0, -5.0])
    else:
        gamma[LAST] = 0.0
    with torch.no_grad():
        m[0].weight.copy_(w)
        m[0].bias.zero_()
        m[1].weight.copy_(gamma)
        m[1].bias.copy_(beta)
        m[5].weight.copy_(lin)
        m[5].bias.copy_(torch.tensor([1.0, -1.0]))
    return m.eval()


def _cnn_data(seed: int = 1, n: int = 4, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 3, 6, 6, generator=g)
        s = torch.randn(bs, generator=g)
        x[:, 0] += s[:, None, None]
        x[:, 2] = 0.0
        out.append((x, (s > 0).long()))
    return out


MODELS = {"mlp": (_mlp, _mlp_data), "cnn": (_cnn, _cnn_data)}


def _hidden_scores(kind: str, variant: str, criterion: str) -> np.ndarray:
    build, make_data = MODELS[kind]
    model, data = build(variant), make_data()
    a = surgeon.analyze(model, data[0][0])
    (gi,) = [i for i, g in enumerate(a.groups) if g.prunable and g.n_units == HIDDEN]
    scores = get_criterion(criterion, data=data).score(model, a.groups)
    assert all(s.shape == (g.n_units,) for s, g in zip(scores, a.groups))
    return scores[gi]


PLANTED = ([(k, v, c) for k in MODELS for v in ("zero", "dead") for c in DATA_AWARE]
           + [(k, "zero", c) for k in MODELS for c in ("l1", "l2", "lamp")] + [("cnn", "zero", "bn_scale")])


@pytest.mark.parametrize("kind,variant,criterion", PLANTED, ids=["-".join(p) for p in PLANTED])
def test_ranks_planted_units(kind, variant, criterion):
    s = _hidden_scores(kind, variant, criterion)
    assert np.isfinite(s).all() and (s >= 0).all()
    assert np.argmax(s) == 0, f"critical unit not first: {np.round(s, 3)}"
    assert np.argmin(s) == LAST, f"unimportant unit not last: {np.round(s, 3)}"
    order = np.sort(s)
    assert order[1] > order[0] and order[-1] > order[-2], "planted units tie with others"


@pytest.mark.parametrize("kind", list(MODELS))
def test_dead_unit_fools_magnitude(kind):
    """The ``dead`` plant is not trivial: weights alone rank the useless unit first."""
    for criterion in ("l2", "lamp"):
        assert np.argmax(_hidden_scores(kind, "dead", criterion)) == LAST


def test_shrink_with_taylor_removes_dead_unit():
    model, data = _mlp("dead"), _mlp_data()
    x = data[0][0]
    keep = {}
    for criterion in ("taylor", "l2"):
        p = surgeon.plan(model, x, target=0.75, criterion=criterion, data=data if criterion == "taylor" else None)
        (sl,) = [s for s in p.slices if s.tensor == "0.weight" and s.dim == 0]
        keep[criterion] = set(sl.keep)
        assert p.criterion == criterion
    assert 0 in keep["taylor"] and LAST not in keep["taylor"]
    assert LAST in keep["l2"]  # the contrast: magnitude keeps the heavy dead unit
    small = surgeon.shrink(model, x, target=0.75, criterion="taylor", data=data)
    assert small[0].out_features < HIDDEN
    assert abs(surgeon.verify.count_flops(small, x) / surgeon.verify.count_flops(model, x) - 0.75) <= 0.01


# -- values against independent computations ---------------------------------------------------
def _manual_gradient_scores(model, data, loss_fn, power):
    """Per-member saliency with loss.backward() on a copy, then the documented combination."""
    twin = copy.deepcopy(model)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in twin.named_parameters()}
    for x, y in data:
        twin.zero_grad()
        loss_fn(twin(x), y).backward()
        for n, p in twin.named_parameters():
            acc[n] += (p.detach().double() * p.grad.double()).abs() ** power
    members = [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]
    return [(np.arange(HIDDEN), (acc[n].sum(dim=1 - d) if acc[n].dim() == 2 else acc[n]).numpy())
            for n, d in members]


@pytest.mark.parametrize("criterion,power", [("taylor", 1), ("fisher", 2)])
def test_gradient_scores_match_backward(criterion, power):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 3))
    data = [(torch.randn(16, 5), torch.randn(16, 3)) for _ in range(3)]
    loss_fn = lambda out, y: ((out - y) ** 2).mean()  # noqa: E731 - a user's custom loss
    a = surgeon.analyze(model, data[0][0])
    (g,) = [g for g in a.groups if g.prunable]
    got = get_criterion(criterion, data=data, loss_fn=loss_fn).score(model, [g])[0]
    want = combine(g, _manual_gradient_scores(model, data, loss_fn, power))
    assert np.std(want) > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_activation_scores_match_wanda_by_hand():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 3))
    data = [torch.randn(16, 5) * torch.arange(1, 6) for _ in range(3)]  # unequal input norms
    a = surgeon.analyze(model, data[0])
    (g,) = [g for g in a.groups if g.prunable]
    got = get_criterion("activation", data=data).score(model, [g])[0]
    x = torch.cat(data).double()
    h = torch.relu(model[0](x.float())).detach().double()
    w1, w2 = model[0].weight.detach().double(), model[2].weight.detach().double()
    rows = (w1.abs() * x.norm(dim=0)).sum(dim=1)  # Wanda's per-output view of layer 0
    cols = w2.abs().sum(dim=0) * h.norm(dim=0)  # |W| column times the input channel norm
    want = combine(g, [(np.arange(HIDDEN), rows.numpy()), (np.arange(HIDDEN), cols.numpy())])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_activation_grouped_conv_reads_its_own_group():
    """In a grouped conv, a row reads only its group's input channels: zero group 1's inputs and
    group 1's output units score zero on the conv's own member."""
    conv = nn.Conv2d(4, 6, 3, groups=2)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), conv)
    data = [torch.randn(2, 3, 8, 8)]
    with torch.no_grad():
        model[0].weight[2:] = 0
        model[0].bias[2:] = 0
    a = surgeon.analyze(model, data[0])
    from surgeon.criteria.activation import _wanda
    xnorm = torch.cat([model[0](data[0]).detach().double().square().sum(dim=(0, 2, 3)).sqrt()])
    s = _wanda(conv, xnorm).sum(dim=(1, 2, 3))
    assert (s[:3] > 0).all() and (s[3:] == 0).all()
    assert len(get_criterion("activation", data=data).score(model, a.groups)) == len(a.groups)


def test_lamp_scores_by_hand():
    np.testing.assert_allclose(lamp_scores(np.array([1.0, 4.0, 2.0, 3.0])), [0.1, 1.0, 2 / 9, 3 / 7])
    # ties share the denominator of the whole tie; zeros score zero
    np.testing.assert_allclose(lamp_scores(np.array([2.0, 0.0, 2.0, 1.0])), [0.5, 0.0, 0.5, 0.2])
    np.testing.assert_array_equal(lamp_scores(np.zeros(3)), np.zeros(3))


def test_default_losses():
    from surgeon.criteria._data import default_loss
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert torch.equal(default_loss(logits, y), F.cross_entropy(logits, y))
    seq, tags = torch.randn(2, 5, 3), torch.randint(0, 3, (2, 5))  # token classification
    assert torch.allclose(default_loss(seq, tags), F.cross_entropy(seq.reshape(-1, 3), tags.reshape(-1)))
    assert torch.equal(default_loss(logits, logits * 2), F.mse_loss(logits, logits * 2))


def test_causal_lm_default_loss_and_scores():
    """Dict batches with input_ids: next-token cross-entropy equals the model's own loss."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   use_cache=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    from surgeon.criteria._data import default_loss
    with torch.no_grad():
        own = model(**batch, labels=ids.masked_fill(mask == 0, -100)).loss
        assert torch.allclose(default_loss(model(**batch), batch), own)
    p = surgeon.plan(model, {"input_ids": ids}, target=0.7, criterion="taylor", data=[batch, batch])
    assert p.criterion == "taylor" and abs(p.ratio - 0.7) <= 0.01
    assert all(prm.grad is None for prm in model.parameters())


# -- the user's model is left alone -------------------------------------------------------------
@pytest.mark.parametrize("criterion", DATA_AWARE)
def test_model_state_is_restored(criterion):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).train()
    model[1].eval()  # a mixed mode the scoring must give back as it was
    model[0].weight.requires_grad_(False)
    model[6].weight.grad = torch.full_like(model[6].weight, 7.0)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    a = surgeon.analyze(model, data[0][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    scores = get_criterion(criterion, data=data).score(model, a.groups)
    assert any(np.std(s) > 0 for s, g in zip(scores, a.groups) if g.prunable)
    assert [m.training for m in model.modules()] == modes
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert torch.equal(model[6].weight.grad, torch.full_like(model[6].weight, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "6.weight")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frozen_parameters_are_still_scored():
    model, data = _mlp("dead"), _mlp_data()
    for p in model.parameters():
        p.requires_grad_(False)
    s = _hidden_scores("mlp", "dead", "taylor")
    a = surgeon.analyze(model, data[0][0])
    got = get_criterion("taylor", data=data).score(model, a.groups)
    (gi,) = [i for i, g in enumerate(a.groups) if g.prunable and g.n_units == HIDDEN]
    np.testing.assert_allclose(got[gi], s)
    assert not any(p.requires_grad for p in model.parameters())


def test_dataloader_batches_score_like_tuples():
    """A DataLoader yields [x, y] lists; they score exactly like the (x, y) tuples they hold."""
    data = _mlp_data()
    ds = torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    model = _mlp("dead")
    a = surgeon.analyze(model, data[0][0])
    for criterion in DATA_AWARE:
        want = get_criterion(criterion, data=data).score(model, a.groups)
        got = get_criterion(criterion, data=loader).score(model, a.groups)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_max_batches_limits_what_is_read():
    seen = []

    def stream():
        for i, b in enumerate(_mlp_data(n=10)):
            seen.append(i)
            yield b
    model = _mlp("zero")
    a = surgeon.analyze(model, torch.randn(2, 6))
    surgeon.criteria.Taylor(stream(), max_batches=3).score(model, a.groups)
    assert seen == [0, 1, 2]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", DATA_AWARE)
def test_data_aware_without_data(criterion, monkeypatch):
    with pytest.raises(DataError, match=r"pass data="):
        get_criterion(criterion)
    monkeypatch.setattr(surgeon.api, "analyze", lambda *a, **k: pytest.fail("traced before checking data"))
    with pytest.raises(DataError, match=rf"criterion '{criterion}'.*pass data="):
        surgeon.shrink(_mlp("zero"), torch.randn(2, 6), target=0.5, criterion=criterion)


@pytest.mark.parametrize("criterion", DATA_AWARE)
def test_data_the_model_rejects(criterion):
    model = _mlp("zero")
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    a = surgeon.analyze(model, torch.randn(2, 6))
    bad = [(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(DataError) as err:
        get_criterion(criterion, data=bad).score(model, a.groups)
    msg = str(err.value)
    assert "rejects batch 0" in msg and "module '0'" in msg and "in_features=6" in msg
    assert "tensor(8, 5)" in msg and "example_input" in msg
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("criterion", DATA_AWARE)
def test_empty_data(criterion):
    model = _mlp("zero")
    a = surgeon.analyze(model, torch.randn(2, 6))
    for empty in ([], iter(())):
        with pytest.raises(DataError, match="yielded no batches"):
            get_criterion(criterion, data=empty).score(model, a.groups)
    with pytest.raises(DataError, match="yielded no batches"):
        surgeon.shrink(model, torch.randn(2, 6), target=0.5, criterion=criterion, data=[])


def test_other_bad_data():
    model, data = _mlp("zero"), _mlp_data()
    a = surgeon.analyze(model, data[0][0])
    with pytest.raises(DataError, match="iterable of batches.*data=\\[batch\\]"):
        get_criterion("taylor", data=data[0][0])
    with pytest.raises(DataError, match="inputs only.*loss_fn="):
        get_criterion("taylor", data=[x for x, _ in data]).score(model, a.groups)
    with pytest.raises(DataError, match="scalar tensor"):
        get_criterion("fisher", data=data, loss_fn=lambda out, y: out).score(model, a.groups)
    with pytest.raises(DataError, match="integer class targets"):
        get_criterion("taylor", data=[(x, x) for x, _ in data]).score(model, a.groups)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        get_criterion("taylor", data=data, loss_fn="ce")
    with pytest.raises(TypeError, match="built already"):
        get_criterion(get_criterion("l2"), data=data)
    # bare tensors are fine where no loss is needed
    get_criterion("activation", data=[x for x, _ in data]).score(model, a.groups)


def test_unknown_name_fails_before_reading_data():
    def never():
        pytest.fail("data was read for an unknown criterion")
        yield
    with pytest.raises(ValueError, match="unknown criterion 'tayler'"):
        get_criterion("tayler", data=never())


def test_factories_receive_data_only_if_they_take_it():
    got = {}

    class Probe:
        name = "probe"

        def __init__(self, data=None, loss_fn=None):
            got.update(data=data, loss_fn=loss_fn)

        def score(self, model, groups):
            return [np.ones(g.n_units) for g in groups]
    CRITERIA["_probe"] = Probe
    try:
        loss = lambda o, t: o.sum()  # noqa: E731
        get_criterion("_probe", data=[1], loss_fn=loss)
        assert got == {"data": [1], "loss_fn": loss}
    finally:
        del CRITERIA["_probe"]
    assert get_criterion("l2", data=[1]).name == "l2"  # data-free criteria ignore data
