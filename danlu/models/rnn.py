"""A recurrent encoder (RNN, LSTM or GRU) with a task head, for text or numeric sequences.

Rows of different lengths run as packed sequences, so padding never enters the
recurrence: a row's output is the same whatever it is batched with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from danlu.config import RNNConfig
from danlu.errors import DanluError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNEncoder(nn.Module):
    def __init__(self, cfg: RNNConfig, schema: object, out_dim: int) -> None:
        super().__init__()
        kind = getattr(schema, "input_kind", "tabular")
        if kind not in ("text", "sequence"):
            raise DanluError("model.type rnn reads text (data.text) or sequences (data.sequence)")
        self.pooling = cfg.pooling
        if kind == "text":
            self.embed: nn.Module | None = nn.Embedding(
                schema.vocab_size,
                cfg.embedding_dim,
                padding_idx=schema.pad_id,  # type: ignore[attr-defined]
            )
            n_in = cfg.embedding_dim
        else:
            self.embed, n_in = None, schema.n_features  # type: ignore[attr-defined]
        self.rnn = CELLS[cfg.cell](
            n_in,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.directions = 2 if cfg.bidirectional else 1
        width = cfg.hidden * self.directions
        self.score = nn.Linear(width, 1) if cfg.pooling == "attention" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, out_dim)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h_in = self.embed(input_ids) if self.embed is not None else x
        assert h_in is not None
        batch, width = h_in.shape[:2]
        if attention_mask is None:
            lengths = torch.full((batch,), width, dtype=torch.long)
        else:
            lengths = attention_mask.sum(1).clamp(min=1)
        packed = pack_padded_sequence(h_in, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
            # the last layer's final state of each direction (backward: its state at step 0)
            pooled = torch.cat(list(h[-self.directions :]), dim=-1)
        else:
            seq, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
            mask = torch.arange(width, device=seq.device)[None, :] < lengths.to(seq.device)[:, None]
            pooled = self._pool(seq, mask)
        return self.head(self.drop(pooled))

    def _pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None]
        if self.pooling == "mean":
            return (seq * m).sum(1) / m.sum(1).clamp(min=1)
        if self.pooling == "max":
            return seq.masked_fill(~m, float("-inf")).max(1).values
        assert self.score is not None
        weights = self.score(seq).masked_fill(~m, float("-inf")).softmax(1)
        return (weights * seq).sum(1)
