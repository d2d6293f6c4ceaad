"""Small Hugging Face and torchvision/timm transformers built from configs (random weights, no
downloads), with the inputs they are called with, for the transformer tests."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

VOCAB, SEQ, BATCH = 96, 8, 2
_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              vocab_size=VOCAB)


def _text() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen),
            "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


def _hf(build: Callable[[Any], nn.Module], config) -> Callable[[], tuple[nn.Module, Any]]:
    def make():
        torch.manual_seed(0)
        config.use_cache = False  # a returned cache object is what torch.export cannot capture
        model = build(config).eval()
        inputs = {"pixel_values": torch.randn(BATCH, 3, 32, 32)} if "Vi" in type(model).__name__ \
            else _text()
        return model, inputs
    return make


def hf_models() -> dict[str, Callable[[], tuple[nn.Module, Any]]]:
    import transformers as T

    gqa = dict(_SMALL, num_key_value_heads=2, max_position_embeddings=32)
    return {
        "bert": _hf(T.BertForSequenceClassification, T.BertConfig(**_SMALL, max_position_embeddings=32)),
        "roberta": _hf(T.RobertaModel, T.RobertaConfig(**_SMALL, max_position_embeddings=40)),
        "distilbert": _hf(T.DistilBertModel, T.DistilBertConfig(
            vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=256, max_position_embeddings=32)),
        "gpt2": _hf(T.GPT2LMHeadModel, T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                    n_positions=32, bos_token_id=0, eos_token_id=0)),
        "llama": _hf(T.LlamaForCausalLM, T.LlamaConfig(**gqa)),
        "mistral": _hf(T.MistralForCausalLM, T.MistralConfig(**gqa)),
        "qwen2": _hf(T.Qwen2ForCausalLM, T.Qwen2Config(**gqa)),
        "vit": _hf(T.ViTForImageClassification, T.ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            image_size=32, patch_size=8, num_labels=10)),
    }


def torch_models() -> dict[str, Callable[[], tuple[nn.Module, Any]]]:
    def tv(name: str, **kw):
        def make():
            import torchvision
            torch.manual_seed(0)
            return getattr(torchvision.models, name)(**kw).eval(), torch.randn(1, 3, 64, 64)
        return make

    def timm_model(name: str):
        def make():
            import timm
            torch.manual_seed(0)
            m = timm.create_model(name, pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                                  depth=2, num_heads=4, num_classes=10).eval()
            return m, torch.randn(2, 3, 32, 32)
        return make

    class _Encoder(nn.Module):  # an encoder between an input projection and a head, as used
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 64)
            layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=256, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.encoder(self.inp(x)))

    def encoder():
        torch.manual_seed(0)
        return _Encoder().eval(), torch.randn(2, 8, 16)

    class _MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 64)
            self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0] + h)

    def mha():
        torch.manual_seed(0)
        return _MHA().eval(), torch.randn(2, 8, 16)

    return {
        "tv_vit": _tv_vit(),
        "tv_swin_t": tv("swin_t"),
        "timm_vit": timm_model("vit_tiny_patch16_224"),
        "timm_deit": timm_model("deit_tiny_patch16_224"),
        "mha": mha,
        "transformer_encoder": encoder,
    }


def _tv_vit():
    def make():
        from torchvision.models.vision_transformer import VisionTransformer
        torch.manual_seed(0)
        m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                              mlp_dim=96, num_classes=10).eval()
        return m, torch.randn(2, 3, 32, 32)
    return make
