"""Config widths that are products of several fields (Swin's MLP: ``int(mlp_ratio * embed_dim)``),
solved together by :func:`surgeon.analysis.hf_products.solve_products`: hand-written footprints
with known answers."""

from __future__ import annotations

from types import SimpleNamespace

from surgeon.analysis.hf_products import ratio_up, solve_products

# embed_dim sizes a norm (a = 1) and, with mlp_ratio, an MLP of two stages (a = 4, 8);
# mlp_ratio sizes the MLPs (a = the stage widths 32 and 64)
CM = SimpleNamespace(footprint={
    "embed_dim": {("norm", 0): (1, 0), ("fc1.0", 0): (4, 0), ("fc1.1", 0): (8, 0)},
    "mlp_ratio": {("fc1.0", 0): (32.0, 0.0), ("fc1.1", 0): (64.0, 0.0)},
})
OLDS = {"embed_dim": 32, "mlp_ratio": 4.0}


def test_a_cut_mlp_is_a_new_ratio():
    got = solve_products(CM, {("norm", 0): (32, 32), ("fc1.0", 0): (128, 100), ("fc1.1", 0): (256, 200)}, OLDS)
    assert got == {"embed_dim": 32, "mlp_ratio": 3.125}


def test_a_cut_width_with_the_mlp_kept_is_a_new_width_and_ratio():
    got = solve_products(CM, {("norm", 0): (32, 16), ("fc1.0", 0): (128, 128), ("fc1.1", 0): (256, 256)}, OLDS)
    assert got == {"embed_dim": 16, "mlp_ratio": 8.0}


def test_no_exact_solution_solves_nothing():
    # the two stages' MLPs disagree on the ratio
    assert solve_products(CM, {("norm", 0): (32, 32), ("fc1.0", 0): (128, 100), ("fc1.1", 0): (256, 256)},
                          OLDS) == {}


def test_heads_times_head_dim_is_ambiguous_and_left_alone():
    # q rows = heads x head_dim and nothing else tells them apart: no unique solution
    cm = SimpleNamespace(footprint={"num_heads": {("q", 0): (16, 0)}, "head_dim": {("q", 0): (4, 0)}})
    assert solve_products(cm, {("q", 0): (64, 32)}, {"num_heads": 4, "head_dim": 16}) == {}


def test_a_ratio_is_written_so_that_truncation_gives_the_width_back():
    assert int(115 / 112 * 112) == 114  # the nearest float truncates one unit short
    r = ratio_up(115 / 112, [(112.0, 115), (224.0, 230)])
    assert int(r * 112) == 115 and int(r * 224) == 230
