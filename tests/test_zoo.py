"""Acceptance on the torchvision zoo: shrink to half the FLOPs, and zero-invariance.

Every model runs in the default suite (about 7 minutes on 2 cores for both tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgeon
from surgeon.verify import count_flops, first_tensor, output_shapes
from helpers import MIN_STD, reference_output
from zoo import build, zoo_names

ZOO = [pytest.param(n, id=n) for n in zoo_names()]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ZOO)
def test_shrink_half_flops(name):
    model, x = build(name)
    before = _state(model)
    shapes = output_shapes(model, x)
    small = surgeon.shrink(model, x, target=0.5)
    assert output_shapes(small, x) == shapes
    ratio = count_flops(small, x) / count_flops(model, x)
    assert abs(ratio - 0.5) <= 0.01, ratio
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was modified"
    assert type(small) is type(model)


def _spread_model(name):
    """The zoo model, re-initialised if needed so its output has real spread (zero-initialised
    heads make a random ViT output all zeros, which any comparison would pass)."""
    model, x = build(name)
    with torch.no_grad():
        ref = first_tensor(model(x))
    if not ref.std() > MIN_STD:
        ref = reference_output(model, x)
    assert ref.std() > MIN_STD
    return model, x


@pytest.mark.parametrize("name", ZOO)
def test_zero_invariance(name):
    model, x = _spread_model(name)
    a = surgeon.analyze(model, x)
    rng = np.random.default_rng(0)
    exact = [g for g in a.groups if g.prunable and g.exact]
    assert exact, "no exact prunable group: the oracle would test nothing"
    picked = rng.choice(len(exact), size=min(4, len(exact)), replace=False)
    units = {}
    for i in picked:
        g = exact[i]
        free = np.nonzero(~g.frozen_units)[0]
        k = max(1, min(len(free) - 1, len(free) // 4))
        units[g.id] = sorted(rng.choice(free, size=k, replace=False).tolist())
    err = surgeon.verify.zero_invariance(model, x, units, analysis=a)
    assert err < 1e-4, (err, units)
