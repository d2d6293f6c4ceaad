"""Recurrent layers. A hidden unit of nn.LSTM / nn.GRU / nn.RNN owns one row of every gate block
of every layer and direction (``hidden_size`` is one attribute), one column of ``weight_hh``, and
index ``j % width`` of the ``[forward, backward]`` output and of the next layer's ``weight_ih``;
``proj_size`` is a group of its own. Surgery rewrites ``hidden_size`` / ``input_size`` /
``proj_size`` and rebuilds ``_flat_weights``.

FLOPs: the oneDNN LSTM kernel (``mkldnn_rnn_layer``) has no formula in torch's flop counter, so
surgeon registers one; the independent count here runs with oneDNN off, where the LSTM runs as
``mm``/``addmm`` that torch counts itself, and the two must agree."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

import surgeon
from helpers import analyze, assert_frozen, assert_tied, check_zero_invariance, group_of, units_of
from surgeon.verify import count_flops, output_shapes

H = 32


def native_flops(model: nn.Module, x) -> int:
    """torch's own count: oneDNN off, so an LSTM runs (and is counted) as mm / addmm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TF32 on oneDNN is for Intel GPUs"
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*x) if isinstance(x, tuple) else model(x)
    return counter.get_total_flops()


class TextClassifier(nn.Module):
    """Embedding -> LSTM/GRU/RNN -> Linear on the last step."""

    def __init__(self, cls=nn.LSTM, layers=2, bidirectional=False, batch_first=True, proj=0):
        super().__init__()
        kw = {"proj_size": proj} if proj else {}
        self.batch_first = batch_first
        self.emb = nn.Embedding(50, 24)
        self.rnn = cls(24, H, layers, batch_first=batch_first, bidirectional=bidirectional, **kw)
        self.fc = nn.Linear((2 if bidirectional else 1) * (proj or H), 5)

    def forward(self, ids):
        x = self.emb(ids if self.batch_first else ids.t())
        out, _ = self.rnn(x)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


class AudioClassifier(nn.Module):
    """Features (B, T, 40) -> Linear -> GRU -> Linear on the final hidden state of the last layer."""

    def __init__(self, cls=nn.GRU, layers=2, bidirectional=False):
        super().__init__()
        self.front = nn.Linear(40, 48)
        self.rnn = cls(48, H, layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(H, 6)
        self.is_lstm = cls is nn.LSTM

    def forward(self, feats):
        out, h = self.rnn(torch.relu(self.front(feats)))
        h = h[0] if self.is_lstm else h  # LSTM: (h_n, c_n); isinstance on an fx proxy would not say
        return self.fc(h[-1])


class StateHeads(nn.Module):
    """Reads h_n and c_n of an LSTM (with or without projection)."""

    def __init__(self, proj=0, layers=2):
        super().__init__()
        self.front = nn.Linear(10, 24)
        self.rnn = nn.LSTM(24, H, layers, batch_first=True, bidirectional=True, proj_size=proj)
        self.fc_h = nn.Linear(proj or H, 5)
        self.fc_c = nn.Linear(H, 5)

    def forward(self, x):
        out, (h, c) = self.rnn(torch.relu(self.front(x)))
        return self.fc_h(h[-1]) + self.fc_c(c[-1])


class Branchy(nn.Module):
    """fx cannot trace the branch on a size: torch.export captures it (aten.lstm / gru / rnn)."""

    def __init__(self, cls, bidirectional, proj=0):
        super().__init__()
        kw = {"proj_size": proj} if proj else {}
        self.front = nn.Linear(10, 24)
        self.rnn = cls(24, H, 2, batch_first=True, bidirectional=bidirectional, **kw)
        self.fc = nn.Linear((2 if bidirectional else 1) * (proj or H), 5)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 1.0
        return self.fc(self.rnn(torch.relu(self.front(x)))[0][:, -1])


class CellLoop(nn.Module):
    """A cell stepped over time in Python (torch.export unrolls it: aten.lstm_cell / gru_cell)."""

    def __init__(self, cls):
        super().__init__()
        self.front = nn.Linear(10, 24)
        self.cell = cls(24, H)
        self.fc = nn.Linear(H, 5)

    def forward(self, x):
        x = torch.relu(self.front(x))
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.fc(state[0] if isinstance(state, tuple) else state)


def ids(batch=3, steps=7):
    return torch.randint(0, 50, (batch, steps), generator=torch.Generator().manual_seed(0))


def feats(batch=3, steps=7, width=10):
    return torch.randn(batch, steps, width, generator=torch.Generator().manual_seed(0))


# -- FLOPs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj", [0, 8])
def test_lstm_flops_match_torchs_own_count(bidirectional, proj):
    """With oneDNN on (the default on CPU) the registered formula gives what torch counts itself
    with oneDNN off; before it was registered, an LSTM counted 0 FLOPs."""
    m = TextClassifier(nn.LSTM, 2, bidirectional, proj=proj).eval()
    x = ids()
    native = native_flops(m, x)
    assert native > 2 * 10 * m.fc.in_features * 5  # far more than the classifier head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "LSTM with projections is not supported with oneDNN"
        assert count_flops(m, x) == native


def test_fused_formulas_count_every_weight_matrix():
    from surgeon.graph.rules.recurrent import _cudnn_rnn, rnn_flops

    shapes = [(4 * H, 24), (4 * H, H), (4 * H,), (4 * H,)]
    assert rnn_flops(21, shapes) == 2 * 21 * (4 * H * 24 + 4 * H * H)
    # cuDNN: the whole stack at once; packed input counts its real tokens (sum of batch_sizes)
    args = [None] * 14
    args[12] = [3, 3, 2]
    assert _cudnn_rnn((8, 24), shapes, *args) == rnn_flops(8, shapes)


# -- structure ---------------------------------------------------------------------------------------
def test_gate_blocks_directions_and_layers_are_one_unit():
    m = TextClassifier(nn.LSTM, 2, bidirectional=True)
    a = analyze(m, ids())
    assert_tied(a, ("rnn.weight_ih_l0", 0), ("rnn.weight_hh_l0", 0), ("rnn.weight_hh_l0", 1),
                ("rnn.bias_ih_l0", 0), ("rnn.bias_hh_l0_reverse", 0), ("rnn.weight_hh_l1_reverse", 1),
                ("rnn.weight_ih_l1", 1), ("rnn.weight_ih_l1_reverse", 0), ("fc.weight", 1))
    assert_tied(a, ("emb.weight", 1), ("rnn.weight_ih_l0", 1), ("rnn.weight_ih_l0_reverse", 1), exactly=True)
    np.testing.assert_array_equal(units_of(a, "rnn.weight_ih_l0", 0), np.arange(4 * H) % H)
    np.testing.assert_array_equal(units_of(a, "rnn.weight_hh_l1", 1), np.arange(H))
    np.testing.assert_array_equal(units_of(a, "rnn.weight_ih_l1", 1), np.arange(2 * H) % H)
    np.testing.assert_array_equal(units_of(a, "fc.weight", 1), np.arange(2 * H) % H)


def test_projection_is_its_own_group():
    a = analyze(StateHeads(proj=8), feats())
    hidden = assert_tied(a, ("rnn.weight_ih_l0", 0), ("rnn.weight_hr_l1_reverse", 1), ("fc_c.weight", 1))
    proj = assert_tied(a, ("rnn.weight_hr_l0", 0), ("rnn.weight_hh_l0", 1), ("rnn.weight_ih_l1", 1),
                       ("fc_h.weight", 1))
    assert hidden.id != proj.id and hidden.n_units == H and proj.n_units == 8


def test_state_tuple_used_whole_is_frozen():
    class Whole(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, H, batch_first=True)
            self.fc = nn.Linear(H, 2)

        def forward(self, x):
            out, state = self.rnn(x)
            return self.fc(out[:, -1]), state

    a = analyze(Whole(), feats(width=8))
    assert_frozen(group_of(a, "rnn.weight_hh_l0", 1), "state tuple is used whole")


# -- zero-invariance ------------------------------------------------------------------------------
CASES = [(cls, layers, bi, bf) for cls in (nn.LSTM, nn.GRU, nn.RNN)
         for layers, bi, bf in ((1, False, True), (2, True, False), (3, True, True), (2, False, False))]


IDS = [f"{c.__name__}-l{n}-{'bi' if b else 'uni'}-{'bf' if f else 'tf'}" for c, n, b, f in CASES]


@pytest.mark.parametrize("cls,layers,bidirectional,batch_first", CASES, ids=IDS)
def test_zero_invariance(cls, layers, bidirectional, batch_first):
    m = TextClassifier(cls, layers, bidirectional, batch_first)
    check_zero_invariance(m, ids(), expect=[f"rnn.weight_hh_l{layers - 1}", "emb.weight"], rounds=1)


@pytest.mark.parametrize("proj", [0, 8])
def test_zero_invariance_through_h_n_and_c_n(proj):
    check_zero_invariance(StateHeads(proj), feats(), expect=["rnn.weight_hh_l1_reverse", "fc_c.weight"],
                          rounds=1)


class Seq2Seq(nn.Module):
    """An encoder's (h_n, c_n) is the decoder's initial state: both stacks keep one hidden width."""

    def __init__(self, cls):
        super().__init__()
        self.src, self.tgt = nn.Linear(10, 24), nn.Linear(6, 24)
        self.enc = cls(24, H, 2, batch_first=True)
        self.dec = cls(24, H, 2, batch_first=True)
        self.out = nn.Linear(H, 6)

    def forward(self, x, y):
        _, state = self.enc(self.src(x))
        out, _ = self.dec(self.tgt(y), state)
        return self.out(out)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_encoder_state_feeds_the_decoder(cls):
    x = (feats(), torch.randn(3, 5, 6))
    a = analyze(Seq2Seq(cls), x)
    g = assert_tied(a, ("enc.weight_hh_l1", 1), ("dec.weight_hh_l0", 1), ("out.weight", 1))
    assert g.prunable
    check_zero_invariance(Seq2Seq(cls), x, expect=["enc.weight_hh_l0", "dec.weight_ih_l1"], rounds=1)


SLOW = pytest.mark.zoo  # torch.export of a recurrent stack takes seconds: the rest run with -m zoo


@pytest.mark.parametrize("cls,bidirectional,proj", [
    (nn.LSTM, False, 8), (nn.RNN, False, 0), pytest.param(nn.LSTM, True, 0, marks=SLOW),
    pytest.param(nn.GRU, True, 0, marks=SLOW)])
def test_zero_invariance_on_the_export_path(cls, bidirectional, proj):
    m = Branchy(cls, bidirectional, proj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "LSTM with projections is not supported with oneDNN"
        assert analyze(m, feats()).traced.mode == "export"
        check_zero_invariance(m, feats(), expect=["rnn.weight_hh_l1"], rounds=1)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells(cls):
    m = CellLoop(cls)
    check_zero_invariance(m, feats(steps=4), expect=["cell.weight_hh", "cell.weight_ih"], rounds=1)
    small = surgeon.shrink(m, feats(steps=4), target=0.5, round_to=None)
    assert small.cell.hidden_size == small.cell.weight_hh.shape[1] < H
    assert small.cell.input_size == small.front.out_features < 24


def test_packed_sequences_after_surgery():
    """A plan made on padded input, applied, then run on a PackedSequence: the zeroed and the
    pruned LSTM agree on the packed kernels too (the capture itself needs a plain tensor)."""
    from surgeon.planning.planner import build_plan

    m = AudioClassifier(nn.LSTM, 2, bidirectional=True)
    x = torch.randn(3, 7, 40)
    a = analyze(m, x)
    g = group_of(a, "rnn.weight_hh_l0", 1)
    drop = [1, 4, 9, 30]
    keep = a.full_keep()
    keep[a.groups.index(g)][drop] = False
    zeroed = copy.deepcopy(m)
    params = dict(zeroed.named_parameters())
    with torch.no_grad():
        for mem in g.tensors:
            params[mem.name].index_fill_(mem.dim, torch.as_tensor(g.unit_indices(mem, drop)), 0.0)
    small = surgeon.apply(zeroed, build_plan(a, keep, target=1.0, metric="flops", criterion="manual",
                                             round_to=None))
    assert small.rnn.hidden_size == H - len(drop)
    packed = pack_padded_sequence(torch.relu(m.front(x)), torch.tensor([7, 3, 5]), batch_first=True,
                                  enforce_sorted=False)
    with torch.no_grad():
        ref, (h_ref, _) = zeroed.rnn(packed)
        out, (h_out, _) = small.rnn(packed)
    ref, out = ref.data, out.data  # the packed rows of every real step
    keep_cols = [j for j in range(2 * H) if j % H not in drop]
    assert float(ref.std()) > 1e-3
    torch.testing.assert_close(out, ref[:, keep_cols], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_out, h_ref[..., [j for j in range(H) if j not in drop]], rtol=1e-5, atol=1e-6)


# -- shrink lands on the target ---------------------------------------------------------------------
def _lands(m, x, target=0.5, **kw):
    base = native_flops(m, x)
    small = surgeon.shrink(m, x, target=target, **kw)
    assert output_shapes(small, x) == output_shapes(m, x)
    got = native_flops(small, x) / base
    assert abs(got - target) <= 0.01, f"landed at {got:.4f}"
    return small


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True), (3, False)])
def test_text_classifier_lands_on_half(layers, bidirectional):
    small = _lands(TextClassifier(nn.LSTM, layers, bidirectional), ids(4, 12))
    rnn = small.rnn
    assert rnn.hidden_size < H and rnn.input_size == small.emb.embedding_dim
    names = rnn._flat_weights_names
    assert all(w is getattr(rnn, n) for w, n in zip(rnn._flat_weights, names))  # no stale tensors
    rnn.flatten_parameters()
    assert small.fc.in_features == (2 if bidirectional else 1) * rnn.hidden_size


@pytest.mark.parametrize("cls,layers,bidirectional", [(nn.GRU, 2, False), (nn.GRU, 1, True), (nn.LSTM, 3, True)])
def test_audio_classifier_lands_on_half(cls, layers, bidirectional):
    small = _lands(AudioClassifier(cls, layers, bidirectional), torch.randn(2, 16, 40))
    assert small.rnn.hidden_size < H


def test_inplace_keeps_the_lstm_running():
    m = TextClassifier(nn.LSTM, 2, True, proj=8)
    x = ids()
    params = {n: p for n, p in m.rnn.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgeon.shrink(m, x, target=0.5, round_to=None, inplace=True)
        assert small is m and all(p is params[n] for n, p in m.rnn.named_parameters())
        assert m.rnn.hidden_size == m.rnn.weight_hh_l0.shape[0] // 4
        assert m.rnn.proj_size == m.rnn.weight_hr_l0.shape[0]
        assert m(x).shape == (3, 5)
