"""Attribute fix-ups of the recurrent layers: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` and the cells.

Widths are read back from the sliced weights. An ``RNNBase`` also keeps ``_flat_weights``, a list
of references to its parameters that the fused kernels read: surgery replaces the parameters in
``_parameters``, so the list is rebuilt from the names (and re-flattened on CUDA), or the module
would go on computing with the old, unsliced tensors. :mod:`.fixers` registers these.
"""

from __future__ import annotations

from torch import nn

__all__ = ["RECURRENT_FIXERS"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn(m: nn.RNNBase) -> None:
    m.hidden_size = m.weight_hh_l0.shape[0] // _GATES[m.mode]
    if m.proj_size:
        m.proj_size = m.weight_hr_l0.shape[0]
    m.input_size = m.weight_ih_l0.shape[1]
    m._init_flat_weights()  # rebuilds _flat_weights from the (new) parameters, then flatten_parameters()


def _rnn_cell(m: nn.RNNCellBase) -> None:
    m.hidden_size = m.weight_hh.shape[1]
    m.input_size = m.weight_ih.shape[1]


RECURRENT_FIXERS = {nn.RNNBase: _rnn, nn.RNNCellBase: _rnn_cell}
