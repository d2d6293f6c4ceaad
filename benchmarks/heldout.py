"""Held-out sweep: model families that no test or issue names, each at a small config (random
weights): analyze, zero-invariance on random units of up to four exact groups, then
``shrink(target=0.5)`` at the defaults, in a fresh process per model (one thread, ``nice``).

Status per model: ``ok`` (lands within 0.01 of 0.5 on ``count_flops``), ``off`` (lands outside),
``refused`` (a ``SurgeonError`` that says why, e.g. a Hugging Face config that cannot express a
width), ``CRASH`` (anything else: a bug), ``build-failed`` (the sweep's own config is wrong). The
``zi`` column is the zero-invariance error (should be ~1e-6 or less). It finds classes of failure
to fix, not a score to tune: the configs are tiny, so FFN-only floors sit higher than at real
proportions.

    PYTHONPATH=. python benchmarks/heldout.py --all [substring,substring]
    PYTHONPATH=. python benchmarks/heldout.py opt          # one model, one JSON line
"""
import json
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch
torch.set_num_threads(1)
V = 512

def txt(n=2, s=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (n, s), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

def hf(cls, cfg_cls, inp="text", **kw):
    def make():
        import transformers as T
        cfg = getattr(T, cfg_cls)(**kw)
        torch.manual_seed(0)
        m = getattr(T, cls)(cfg).eval()
        if inp == "text": x = txt()
        elif inp == "image": x = {"pixel_values": torch.randn(2, 3, kw.get("image_size", 32), kw.get("image_size", 32))}
        elif inp == "audio": x = {"input_values": torch.randn(2, 4000)}
        elif inp == "s2s":
            x = txt(); x["decoder_input_ids"] = x["input_ids"][:, :6]
        elif inp == "feat": x = {"input_features": torch.randn(2, kw.get("num_mel_bins", 80), 2 * kw.get("max_source_positions", 1500))}
        else: x = inp()
        return m, x
    return make

L = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
MODELS = {
 "opt": hf("OPTForCausalLM", "OPTConfig", vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=64),
 "falcon": hf("FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
 "bloom": hf("BloomForCausalLM", "BloomConfig", vocab_size=V, hidden_size=64, n_layer=2, n_head=4),
 "gptj": hf("GPTJForCausalLM", "GPTJConfig", vocab_size=V, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64),
 "phi3": hf("Phi3ForCausalLM", "Phi3Config", **L, max_position_embeddings=64, pad_token_id=0),
 "stablelm": hf("StableLmForCausalLM", "StableLmConfig", **L, num_key_value_heads=4, max_position_embeddings=64),
 "gemma": hf("GemmaForCausalLM", "GemmaConfig", **L, head_dim=16, num_key_value_heads=2, max_position_embeddings=64),
 "qwen3": hf("Qwen3ForCausalLM", "Qwen3Config", **L, head_dim=16, num_key_value_heads=2, max_position_embeddings=64),
 "olmo": hf("OlmoForCausalLM", "OlmoConfig", **L, max_position_embeddings=64),
 "granite": hf("GraniteForCausalLM", "GraniteConfig", **L, max_position_embeddings=64),
 "electra": hf("ElectraForSequenceClassification", "ElectraConfig", vocab_size=V, hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64),
 "albert": hf("AlbertForSequenceClassification", "AlbertConfig", vocab_size=V, hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64),
 "deberta_v2": hf("DebertaV2ForSequenceClassification", "DebertaV2Config", **L, max_position_embeddings=64),
 "xlm_roberta": hf("XLMRobertaForSequenceClassification", "XLMRobertaConfig", **L, max_position_embeddings=72),
 "mpnet": hf("MPNetModel", "MPNetConfig", **L, max_position_embeddings=72),
 "mobilebert": hf("MobileBertForSequenceClassification", "MobileBertConfig", vocab_size=V, hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, intra_bottleneck_size=32, true_hidden_size=32, max_position_embeddings=64),
 "deit": hf("DeiTForImageClassification", "DeiTConfig", "image", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=10),
 "beit": hf("BeitForImageClassification", "BeitConfig", "image", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=10),
 "dinov2": hf("Dinov2Model", "Dinov2Config", "image", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8),
 "clip_vision": hf("CLIPVisionModel", "CLIPVisionConfig", "image", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8),
 "clip_text": hf("CLIPTextModel", "CLIPTextConfig", vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64),
 "resnet_hf": hf("ResNetForImageClassification", "ResNetConfig", "image", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10),
 "segformer": hf("SegformerForSemanticSegmentation", "SegformerConfig", "image", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32, num_labels=4),
 "mobilevit": hf("MobileViTForImageClassification", "MobileViTConfig", "image", image_size=64, num_labels=10),
 "efficientnet_hf": hf("EfficientNetForImageClassification", "EfficientNetConfig", "image", image_size=64, num_labels=10),
 "wav2vec2": hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", "audio", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
 "whisper": hf("WhisperForConditionalGeneration", "WhisperConfig", lambda: {"input_features": torch.randn(1, 16, 64), "decoder_input_ids": torch.tensor([[1, 2, 3]])}, vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
 "pegasus": hf("PegasusForConditionalGeneration", "PegasusConfig", "s2s", vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64),
 "marian": hf("MarianMTModel", "MarianConfig", "s2s", vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64, decoder_start_token_id=0, pad_token_id=1),
 "mt5": hf("MT5ForConditionalGeneration", "MT5Config", "s2s", vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0),
}

def tv(name, shape, **kw):
    def make():
        import torchvision
        torch.manual_seed(0)
        m = torchvision.models.get_model(name, weights=None, **kw).eval()
        return m, torch.randn(*shape)
    return make
for n in ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"):
    MODELS["tv_" + n] = tv(n, (1, 3, 96, 96), weights_backbone=None, num_classes=5)
for n in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t"):
    MODELS["tv_" + n] = tv(n, (1, 3, 16, 112, 112) if n == "s3d" else (1, 3, 8, 64, 64), num_classes=5)
MODELS["tv_raft_small"] = lambda: (__import__("torchvision").models.optical_flow.raft_small(weights=None).eval(), (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)))

def timm_m(name, size=64, **kw):
    def make():
        import timm
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval(), torch.randn(1, 3, size, size)
    return make
for n in ("regnetx_002", "ghostnet_100", "rexnet_100", "hrnet_w18_small", "dla34", "cspresnet50", "dpn68", "res2net50_14w_8s", "resnest14d", "skresnet18", "nfnet_l0", "repvgg_a0", "efficientformer_l1", "poolformer_s12", "mobilevitv2_050", "levit_128s", "tinynet_a", "lcnet_050", "fbnetv3_b", "hgnetv2_b0", "convmixer_1024_20_ks9_p14", "coat_lite_tiny", "pvt_v2_b0", "edgenext_xx_small", "mobileone_s0", "fastvit_t8", "efficientvit_b0", "inception_next_tiny", "mambaout_femto", "starnet_s1"):
    MODELS["timm_" + n] = timm_m(n, 224 if n.startswith(("levit", "efficientformer", "coat", "hrnet", "fastvit", "efficientvit", "hgnet")) else 64)

def one(name):
    import random

    import numpy as np
    import surgeon
    from surgeon.verify import count_flops, zero_invariance
    from surgeon.errors import SurgeonError
    warnings.simplefilter("ignore")
    rec = {"model": name}
    t0 = time.time()
    try:
        model, x = MODELS[name]()
    except Exception as e:
        rec.update(status="build-failed", err=f"{type(e).__name__}: {str(e)[:200]}"); return rec
    try:
        a = surgeon.analyze(model, x)
        groups = [g for g in a.groups if g.prunable and g.exact]
        rec["groups"] = f"{len(groups)}/{len(a.groups)}"
        rng = np.random.default_rng(0)
        worst = 0.0
        if groups:
            units = {}
            for g in random.Random(0).sample(groups, min(4, len(groups))):
                free = np.nonzero(~g.frozen_units)[0]; us = sorted(rng.choice(free, max(1, int(0.3 * len(free))), replace=False).tolist()) if len(free) > 1 and not g.layers else []
                if us: units[g.id] = us
            if units:
                worst = zero_invariance(model, x, units, analysis=a)
        rec["zi"] = worst
    except SurgeonError as e:
        rec.update(status="analyze-refused", err=f"{type(e).__name__}: {str(e)[:300]}"); return rec
    except Exception as e:
        rec.update(status="analyze-CRASH", err=f"{type(e).__name__}: {str(e)[:300]}", tb=traceback.format_exc()[-1500:]); return rec
    try:
        base = count_flops(model, x)
        small = surgeon.shrink(model, x, 0.5)
        rec["ratio"] = round(count_flops(small, x) / base, 4)
        rec["status"] = "ok" if abs(rec["ratio"] - 0.5) <= 0.01 else "off"
    except SurgeonError as e:
        rec.update(status="refused", err=f"{type(e).__name__}: {str(e)[:300]}")
    except Exception as e:
        rec.update(status="CRASH", err=f"{type(e).__name__}: {str(e)[:300]}", tb=traceback.format_exc()[-1500:])
    rec["s"] = round(time.time() - t0, 1)
    return rec

if __name__ == "__main__":
    if sys.argv[1] == "--all":
        names = [n for n in MODELS if len(sys.argv) < 3 or any(f in n for f in sys.argv[2].split(","))]
        for n in names:
            try:
                out = subprocess.run(["nice", "-n", "10", sys.executable, __file__, n], capture_output=True, text=True, timeout=600)
                line = (out.stdout.strip().splitlines() or [json.dumps({"model": n, "status": "died", "err": out.stderr[-400:]})])[-1]
            except subprocess.TimeoutExpired:
                line = json.dumps({"model": n, "status": "timeout"})
            print(line, flush=True)
    else:
        print(json.dumps(one(sys.argv[1])))
