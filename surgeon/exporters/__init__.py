"""Exporters: dense ONNX files of (shrunk) models, parity-checked in onnxruntime."""

from . import onnx

__all__ = ["onnx"]
