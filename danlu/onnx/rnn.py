"""Recurrent layers without packed sequences, for export.

danlu's RNN models run packed sequences so that padding never enters the recurrence. Neither
of torch's ONNX exporters carries a PackedSequence through faithfully (the graph they write
lets padding into the backward direction), so the exported forward runs the same weights as
one single-layer, single-direction RNN per layer and direction over right-padded rows: the
forward direction as it is (padding comes after every real step), the backward direction on
each row reversed within its own length. Outputs at padded steps are zero, as
`pad_packed_sequence` leaves them; eager PyTorch of the original model is what the parity
check compares against.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from danlu.models.rnn import RNNEncoder


def reverse_rows(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, F) -> each row's first `length` steps in reverse order; padding stays in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = lengths[:, None] - 1 - steps
    index = torch.where(index >= 0, index, steps)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


class Unpacked(nn.Module):
    """An nn.RNN/GRU/LSTM (batch_first) as per-layer, per-direction single-layer modules
    holding copies of its parameters: forward(x, lengths) -> (outputs (B, T, directions x H), zero at
    padding; the last layer's final state of each direction, (B, directions x H))."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.directions = 2 if rnn.bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(rnn.num_layers):
            for d in range(self.directions):
                n_in = rnn.input_size if layer == 0 else rnn.hidden_size * self.directions
                extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
                cell = type(rnn)(n_in, rnn.hidden_size, 1, bias=rnn.bias, batch_first=True, **extra)
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    if hasattr(rnn, name + suffix):
                        # copied: an exporter given one parameter under two names (the
                        # RNN's and this cell's) may write the wrong one into the graph
                        weight = getattr(rnn, name + suffix).detach().clone()
                        setattr(cell, name + "_l0", nn.Parameter(weight, requires_grad=False))
                self.cells.append(cell)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[..., None]
        last_step = (lengths - 1).clamp(min=0)[:, None, None]
        h = x
        finals: list[torch.Tensor] = []
        for layer in range(len(self.cells) // self.directions):
            outs, finals = [], []
            for d in range(self.directions):
                cell = self.cells[layer * self.directions + d]
                # the initial state made from the batch: traced from a constant, it would fix the batch size
                h0 = h.new_zeros(1, h.shape[0], cell.hidden_size)
                out, _ = cell(
                    reverse_rows(h, lengths) if d else h, (h0, h0) if isinstance(cell, nn.LSTM) else h0
                )
                # the state after each row's last real step (the backward pass ends at step 0)
                finals.append(out.gather(1, last_step.expand(-1, 1, out.shape[2]))[:, 0])
                outs.append(reverse_rows(out, lengths) if d else out)
            h = torch.cat(outs, dim=-1) * real
        return h, torch.cat(finals, dim=-1)


class UnpackedRNNEncoder(nn.Module):
    """RNNEncoder.forward with `Unpacked` in place of the packed recurrence (the embedding,
    pooling and head are the encoder's own)."""

    def __init__(self, encoder: RNNEncoder) -> None:
        super().__init__()
        self.encoder, self.rnn = encoder, Unpacked(encoder.rnn)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        enc = self.encoder
        h_in = enc.embed(input_ids) if enc.embed is not None else x
        assert h_in is not None
        batch, width = h_in.shape[:2]
        if attention_mask is None:
            lengths = torch.full((batch,), width, dtype=torch.long, device=h_in.device)
        else:
            lengths = attention_mask.sum(1).clamp(min=1)
        seq, last = self.rnn(h_in, lengths)
        if enc.pooling == "last":
            pooled = last
        else:
            pooled = enc._pool(seq, torch.arange(width, device=seq.device)[None, :] < lengths[:, None])
        return enc.head(enc.drop(pooled))


def without_packing(model: nn.Module) -> nn.Module:
    """`model` with every RNNEncoder (itself, or a fusion model's encoder) in its exportable
    form: a wrapper sharing its parameters, or a copy of a model holding one; `model` itself is
    left as it is (the reference of the parity check)."""
    if isinstance(model, RNNEncoder):
        return UnpackedRNNEncoder(model)
    if not any(isinstance(m, RNNEncoder) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RNNEncoder):
                setattr(parent, name, UnpackedRNNEncoder(child))
    return model
