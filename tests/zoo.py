"""The torchvision classification zoo used by the zoo tests and benchmarks."""

from __future__ import annotations

import warnings

import torch

LARGEST = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf",
           "regnet_x_32gf"}
# a fast subset that still covers every coupling pattern of the zoo: residual adds, grouped and
# depthwise convs, squeeze-excite, concat (dense and inception), channel shuffle, fire modules,
# flatten into linear, layer norm with permutes, attention (MHA, swin windows, maxvit einsum)
REPRESENTATIVE = ["resnet18", "resnext50_32x4d", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
                  "googlenet", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11_bn", "convnext_tiny",
                  "regnet_y_400mf", "vit_b_32", "swin_t", "maxvit_t", "mnasnet0_5", "alexnet"]


def zoo_names() -> list[str]:
    import torchvision

    return [m for m in torchvision.models.list_models(module=torchvision.models) if m not in LARGEST]


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A randomly initialised zoo model in eval mode and its example input."""
    import torchvision

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None).eval()
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)
