"""Speech models.

- `ctc`: convolutional subsampling of log-mel frames, a BiGRU/BiLSTM, Transformer or
  Conformer encoder, and a linear CTC head over characters (blank = 0).
- `audio_cnn`: a small conv net over log-mel frames, pooled over time, for clip
  classification (keyword spotting).
- `wav2vec2_ctc`: a Hugging Face Wav2Vec2-style CTC checkpoint with a new head sized to the
  training vocabulary, exported back as a transformers folder.

Every model takes `features` (batch, frames, dim) and `lengths` (batch,); CTC models return
(log-probabilities (batch, frames', vocab), output lengths).

A trained speech run is loaded by danlu.speech.recognizer.load_recognizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) True where a frame is real, False where it is padding."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------- ctc
class Subsample(nn.Module):
    """Stride-2 3x3 convolutions over (time, mel): each halves both axes."""

    def __init__(self, dim: int, channels: int, factor: int, hidden: int) -> None:
        super().__init__()
        self.n = int(math.log2(factor))
        layers: list[nn.Module] = []
        c, f = 1, dim
        for _ in range(self.n):
            layers += [nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU()]
            c, f = channels, (f - 1) // 2 + 1
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c * f, hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(x.unsqueeze(1))  # (B, C, T', F')
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))
        for _ in range(self.n):
            lengths = (lengths - 1) // 2 + 1
        return x, lengths


class ConvModule(nn.Module):
    """Conformer convolution: pointwise + GLU, depthwise, norm, SiLU, pointwise."""

    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).masked_fill(~mask[..., None], 0.0).transpose(1, 2)
        h = F.glu(self.pw1(h), dim=1)
        h = self.pw2(F.silu(self.bn(self.dw(h))))
        return self.drop(h.transpose(1, 2))


class ConformerBlock(nn.Module):
    """Half FFN, self-attention, convolution, half FFN, final norm (Gulati et al. 2020)."""

    def __init__(self, d: int, heads: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.ff1, self.ff2 = (
            nn.Sequential(
                nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * d, d)
            )
            for _ in range(2)
        )
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.conv = ConvModule(d, kernel, dropout)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.drop(self.ff1(x))
        h = self.attn_norm(x)
        x = x + self.drop(self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0])
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.drop(self.ff2(x))
        return self.norm(x)


def sinusoids(length: int, d: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class CTCModel(nn.Module):
    def __init__(self, cfg: Any, schema: Any, out_dim: int) -> None:
        super().__init__()
        self.encoder_kind = cfg.encoder
        self.subsample = Subsample(schema.feature_dim, cfg.channels, cfg.subsample, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        d = cfg.hidden
        if cfg.encoder in ("gru", "lstm"):
            rnn = nn.GRU if cfg.encoder == "gru" else nn.LSTM
            self.rnn = rnn(
                d,
                d // 2 if d > 1 else 1,
                cfg.layers,
                batch_first=True,
                bidirectional=True,
                dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            )
            width = 2 * (d // 2 if d > 1 else 1)
        elif cfg.encoder == "transformer":
            layer = nn.TransformerEncoderLayer(
                d, cfg.heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            width = d
        else:
            self.blocks = nn.ModuleList(
                ConformerBlock(d, cfg.heads, cfg.conv_kernel, cfg.dropout) for _ in range(cfg.layers)
            )
            width = d
        self.head = nn.Linear(width, out_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(features, lengths)
        lengths = lengths.clamp(1, x.shape[1])
        x = self.drop(x)
        if self.encoder_kind in ("gru", "lstm"):
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            x, _ = nn.utils.rnn.pad_packed_sequence(
                self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
            )
        else:
            mask = _mask(lengths, x.shape[1])
            x = x + sinusoids(x.shape[1], x.shape[2], x.device)
            if self.encoder_kind == "transformer":
                x = self.blocks(x, src_key_padding_mask=~mask)
            else:
                for block in self.blocks:
                    x = block(x, mask)
        return F.log_softmax(self.head(self.drop(x)), dim=-1), lengths


# --------------------------------------------------------------------------- audio classification
class AudioCNN(nn.Module):
    """Conv3x3-BatchNorm-ReLU-MaxPool blocks over (time, mel); each remaining frame keeps its
    channels x mel bins (the spectral shape), then mean and max over the clip's real frames
    feed a linear classifier."""

    def __init__(self, cfg: Any, schema: Any, out_dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c, f = 1, schema.feature_dim
        for width in cfg.channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.MaxPool2d(2, ceil_mode=True),
                )
            )
            c, f = width, (f + 1) // 2
        self.blocks = nn.ModuleList(blocks)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * c * f, out_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)
        for block in self.blocks:
            x = block(x.masked_fill(~_mask(lengths, x.shape[2])[:, None, :, None], 0.0))
            lengths = (lengths + 1) // 2
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T', C * F')
        mask = _mask(lengths.clamp(min=1), x.shape[1])[:, :, None]
        mean = x.masked_fill(~mask, 0.0).sum(1) / mask.sum(1)
        peak = x.masked_fill(~mask, float("-inf")).amax(1)
        return self.head(self.drop(torch.cat([mean, peak], dim=1)))


# --------------------------------------------------------------------------- wav2vec2 fine-tuning
class Wav2Vec2CTC(nn.Module):
    """A transformers CTC model (Wav2Vec2, HuBERT, WavLM ...) whose head is re-made for the
    training vocabulary: id 0 is both CTC blank and the tokenizer's pad token, as in
    transformers, and the word delimiter ' ' is written as '|' in vocab.json."""

    def __init__(self, cfg: Any, schema: Any, out_dim: int) -> None:
        super().__init__()
        from danlu.errors import DanluError

        try:
            from transformers import AutoModelForCTC
        except ImportError:
            raise DanluError("model.type wav2vec2_ctc needs transformers: pip install 'danlu[hf]'") from None
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise DanluError(f"model.path: '{path}' is not a transformers model folder (no config.json)")
        try:
            self.hf = AutoModelForCTC.from_pretrained(
                str(path),
                vocab_size=out_dim,
                pad_token_id=0,
                ignore_mismatched_sizes=True,  # the new head has the new vocabulary's size
                # never the folder's own code: a run must reload from its folder alone, and
                # transformers would otherwise ask on stdin (or fail without a terminal)
                trust_remote_code=False,
            )
        except (OSError, ValueError) as e:
            if "trust_remote_code" in str(e):
                raise DanluError(
                    f"model.path: '{path}' needs its own Python code to load (auto_map in config.json);"
                    " wav2vec2_ctc runs only the architectures transformers ships (Wav2Vec2, HuBERT, WavLM)"
                ) from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DanluError(f"model.path: cannot load '{path}' as a CTC model: {first}") from None
        if cfg.freeze_feature_encoder:
            self.hf.freeze_feature_encoder()
        self.use_attention_mask = getattr(self.hf.config, "feat_extract_norm", "layer") == "layer"

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.squeeze(-1)
        mask = _mask(lengths, x.shape[1]).long() if self.use_attention_mask else None
        logits = self.hf(input_values=x, attention_mask=mask).logits
        out_lengths = self.hf._get_feat_extract_output_lengths(lengths).clamp(1, logits.shape[1])
        return F.log_softmax(logits.float(), dim=-1), out_lengths

    def export(self, out_dir: Path, vocab: list[str], sample_rate: int) -> None:
        """A transformers folder: model, feature extractor and CTC tokenizer with the new vocabulary."""
        from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

        out_dir.mkdir(parents=True, exist_ok=True)
        tokens = {"<pad>": 0, **{("|" if c == " " else c): i + 1 for i, c in enumerate(vocab)}}
        tokens.setdefault("<unk>", len(tokens))
        (out_dir / "vocab.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(out_dir / "vocab.json"), pad_token="<pad>", unk_token="<unk>", word_delimiter_token="|"
        )
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=sample_rate,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=self.use_attention_mask,
        )
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(out_dir))
        # the <unk> row the tokenizer adds has no output unit; the head stays vocab + blank
        self.hf.config.pad_token_id = 0
        self.hf.save_pretrained(str(out_dir), safe_serialization=True)
