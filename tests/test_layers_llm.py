"""Whole decoder layers of Hugging Face LLMs: scored by Block Influence, planned with channels
against one FLOPs target, dropped with the config rewritten (layer count, per-layer lists), and
the result reloads with ``from_pretrained`` and generates with its KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import surgeon
from surgeon.analysis.hf_layers import _rewrite
from surgeon.criteria import BlockInfluence, block_influence, get_criterion

T = pytest.importorskip("transformers")

VOCAB, SEQ = 96, 12


def _flops(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**x)
    return counter.get_total_flops()


def _llama():
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, use_cache=False)
    return T.LlamaForCausalLM(cfg)


def _qwen2():  # layers 2 and 3 slide (a window of 4 tokens): layer_types says so per layer
    cfg = T.Qwen2Config(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, use_cache=False,
                        use_sliding_window=True, sliding_window=4, max_window_layers=2)
    return T.Qwen2ForCausalLM(cfg)


def _inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (2, SEQ), generator=g),
            "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}


@pytest.mark.parametrize("build", [_llama, _qwen2], ids=["llama", "qwen2"])
def test_layers_drop_land_reload_and_generate(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    x = _inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    types_before = list(getattr(model.config, "layer_types", None) or [])

    small = surgeon.shrink(model, x, target=0.5, layers=True)

    assert model.config.to_dict() == config_before, "the input model's config changed"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the input model changed"
    n = len(small.model.layers)
    assert n < 4 and small.config.num_hidden_layers == n, "no layer was dropped"
    assert abs(_flops(small, x) / _flops(model, x) - 0.5) <= 0.01
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == list(range(n))
    if types_before:  # every survivor keeps its attention type, in the config and in the module
        assert small.config.layer_types == [layer.self_attn.layer_type for layer in small.model.layers]
        assert len(small.config.layer_types) == n and set(small.config.layer_types) <= set(types_before)

    small.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ref = small(**x).logits
        assert float(ref.std()) > 1e-3
        assert torch.equal(ref, back(**x).logits)

    back.config.use_cache = True
    prompt = x["input_ids"][:1, :8]
    cached = back.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    plain = back.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (1, 16)
    assert torch.equal(cached, plain), "the KV cache indexes the surviving layers wrongly"


def test_identity_layer_is_the_most_removable():
    torch.manual_seed(0)
    model = _llama().eval()
    with torch.no_grad():  # layer 1 adds nothing to the residual stream: an identity
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    calibration = [_inputs(1), _inputs(2)]
    names = [f"model.layers.{i}" for i in range(4)]
    bi = block_influence(model, names, calibration)
    assert bi[1] < 1e-12 and (bi[[0, 2, 3]] > 1e-3).all()

    crit = get_criterion("block_influence", data=calibration)
    assert isinstance(crit, BlockInfluence)
    x = _inputs()
    a = surgeon.analyze(model, x, layers=True)
    (gi,) = [i for i, g in enumerate(a.groups) if g.layers]
    scores = crit.score(model, list(a.groups))[gi]
    assert int(np.argmin(scores)) == 1
    p = surgeon.plan(model, x, 0.7, layers=True, criterion=crit, analysis=a)
    assert p.drops == ("model.layers.1",) and "block_influence" in p.criterion


def test_block_influence_needs_data():
    with pytest.raises(surgeon.criteria.DataError, match="data"):
        get_criterion("block_influence")


def test_config_rewrite_keeps_each_survivor_as_it_was():
    raw = {"num_hidden_layers": 4, "layer_types": ["full", "full", "sliding", "sliding"],
           "mlp_only_layers": [0, 3], "max_window_layers": 2, "eos_token_id": [0, 1], "hidden_size": 4}
    out = _rewrite(raw, "num_hidden_layers", [True, False, True, True])
    assert out == {"num_hidden_layers": (4, 3), "layer_types": (raw["layer_types"], ["full", "sliding", "sliding"]),
                   "mlp_only_layers": ([0, 3], [0, 2]), "max_window_layers": (2, 1)}


def test_plan_rewrites_layer_types_and_leaves_the_model():
    torch.manual_seed(0)
    model = _qwen2().eval()
    x = _inputs()
    a = surgeon.analyze(model, x, layers=True)
    p = surgeon.plan(model, x, 0.5, layers=True, analysis=a)
    cfg = {u.attr: u.new for u in p.config}
    kept = [i for i in range(4) if f"model.layers.{i}" not in p.drops]
    assert p.drops and cfg["num_hidden_layers"] == len(kept)
    assert cfg["layer_types"] == [model.config.layer_types[i] for i in kept]
    assert "block_influence(example input)" in p.criterion  # how the layers were ranked, on record
    assert "layers dropped: " + ", ".join(p.drops) in p.summary()
    # a layer holds a quarter of the FLOPs: at 0.9 dropping one would overshoot, so none goes
    p9 = surgeon.plan(model, x, 0.9, layers=True, analysis=a)
    assert not p9.drops and abs(p9.ratio - 0.9) <= 0.01
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2  # planning mutates nothing
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4


class _StepConfig(T.PretrainedConfig):
    """Every ``sparse_step``-th layer is twice as wide: a layer pattern written as a rule."""

    model_type = "surgeon-layer-step-test"

    def __init__(self, hidden_size=8, num_hidden_layers=4, sparse_step=1, width=16, **kw):
        self.hidden_size, self.num_hidden_layers, self.sparse_step, self.width = \
            hidden_size, num_hidden_layers, sparse_step, width
        super().__init__(**kw)


class _Block(torch.nn.Module):
    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.up, self.down = torch.nn.Linear(hidden, width), torch.nn.Linear(width, hidden)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class _StepModel(T.PreTrainedModel):
    config_class = _StepConfig

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.layers = torch.nn.ModuleList(_Block(c.hidden_size, c.width * (2 if (i + 1) % c.sparse_step == 0 else 1))
                                          for i in range(c.num_hidden_layers))
        self.head = torch.nn.Linear(c.hidden_size, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class _LayersLast:
    """Layers scored by depth (the last is the least important), every other unit alike."""

    name = "layers-last"

    def score(self, model, groups):
        return [np.arange(g.n_units, 0, -1, dtype=float) if g.layers else np.ones(g.n_units) for g in groups]


@pytest.mark.parametrize("step", [1, 2])
def test_a_drop_the_config_cannot_say_is_refused_with_the_reason(step):
    torch.manual_seed(0)
    model = _StepModel(_StepConfig(sparse_step=step)).eval()
    x = torch.randn(4, 8)
    (g,) = [g for g in surgeon.analyze(model, x, layers=True).groups if g.layers]
    if step == 1:  # every layer alike: any can go, and the config says how many remain
        assert g.prunable and not g.frozen_units.any()
        p = surgeon.plan(model, x, 0.6, layers=True, criterion=_LayersLast())
        assert p.drops and {u.attr: u.new for u in p.config}["num_hidden_layers"] == 4 - len(p.drops)
    else:  # dropping any layer shifts the wide ones: from_pretrained would build other layers
        assert g.frozen_units.all() and "cannot express dropping" in g.reason
        (free,) = [g for g in surgeon.analyze(model, x, layers=True, uniform=False).groups if g.layers]
        assert free.prunable and not free.frozen_units.any()
