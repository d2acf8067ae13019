"""Fusion: one encoder per input (data.inputs), their features combined, one task head.

Each encoder is a single-input model of danlu (mlp, cnn, resnet, rnn, transformer,
pretrained_encoder) built with `dim` outputs: its own output layer is the projection of
that input into a shared `dim`-wide feature space. The features are then fused:

  concat     concatenated, in the order of model.encoders
  gated      each input's features scaled by a sigmoid gate computed from them and the
             mean of all inputs' features, then summed (a gated multimodal unit)
  attention  one token per input (features + a learned embedding of the input), a
             Transformer layer across the tokens, then pooled by a learned query

gated and attention treat the inputs as a set: listing them in another order gives the
same outputs. An input allowed to be missing (data.allow_missing) gets a learned vector in
place of its features on rows where "<input>.present" is false.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from danlu.config import FusionConfig, TransformerConfig
from danlu.errors import DanluError
from danlu.registry import ACTIVATIONS, UntrustedCodeError


class GatedFusion(nn.Module):
    def __init__(self, names: list[str], dim: int) -> None:
        super().__init__()
        self.gates = nn.ModuleDict({n: nn.Linear(2 * dim, dim) for n in names})

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        context = torch.stack(list(feats.values())).mean(0)
        gated = [torch.sigmoid(self.gates[n](torch.cat([f, context], dim=-1))) * f for n, f in feats.items()]
        return torch.stack(gated).sum(0)


class AttentionFusion(nn.Module):
    def __init__(self, names: list[str], dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        from danlu.models.transformer import Block

        self.heads = heads
        self.embed = nn.ParameterDict({n: nn.Parameter(torch.randn(dim) * 0.02) for n in names})
        self.mix = Block(TransformerConfig(d_model=dim, heads=heads, ff=2 * dim, dropout=dropout))
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([f + self.embed[n] for n, f in feats.items()], dim=1)  # (B, inputs, dim)
        h = self.norm(self.mix(tokens, None))
        b, t, d = h.shape
        k, v = self.kv(h).view(b, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = self.query.view(1, self.heads, 1, d // self.heads).expand(b, -1, -1, -1)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, d/heads)
        return self.proj(pooled.reshape(b, d))


class FusionModel(nn.Module):
    def __init__(self, cfg: FusionConfig, schema: object, out_dim: int) -> None:
        super().__init__()
        from danlu import models
        from danlu.data.multimodal import check_names

        if getattr(schema, "input_kind", "") != "multimodal":
            raise DanluError(
                "model.type fusion combines several inputs: declare them under data.inputs"
                " (name: {kind: tabular|text|image, ...}) with one encoder each in model.encoders"
            )
        inputs = schema.inputs  # type: ignore[attr-defined]
        check_names(inputs, cfg.encoders)
        self.names = list(cfg.encoders)
        encoders = {}
        for name, enc in cfg.encoders.items():
            try:
                encoders[name] = models.build(enc, inputs[name], cfg.dim, f"model.encoders.{name}.type")
            except UntrustedCodeError:
                raise
            except DanluError as e:
                raise DanluError(f"model.encoders.{name}: {e}") from None
        self.encoders = nn.ModuleDict(encoders)
        missing = [n for n in self.names if n in schema.missing]  # type: ignore[attr-defined]
        self.missing = nn.ParameterDict({n: nn.Parameter(torch.randn(cfg.dim) * 0.02) for n in missing})
        self.fusion: nn.Module | None = None
        width = cfg.dim
        if cfg.fusion == "concat":
            width = cfg.dim * len(self.names)
        elif cfg.fusion == "gated":
            self.fusion = GatedFusion(self.names, cfg.dim)
        else:
            self.fusion = AttentionFusion(self.names, cfg.dim, cfg.heads, cfg.dropout)
        layers: list[nn.Module] = []
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS.get(cfg.activation)(), nn.Dropout(cfg.dropout)]
            width = h
        self.head = nn.Sequential(*layers, nn.Linear(width, out_dim))

    def features(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each input's `dim` features (the learned "missing" vector where it is absent)."""
        feats = {}
        for name, encoder in self.encoders.items():
            prefix = f"{name}."
            args = {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}
            present = args.pop("present", None)
            f = encoder(**args)
            if name in self.missing and present is not None:
                f = torch.where(present.bool()[:, None], f, self.missing[name].to(f.dtype))
            feats[name] = f
        return feats

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        feats = self.features(**inputs)
        fused = torch.cat(list(feats.values()), dim=-1) if self.fusion is None else self.fusion(feats)
        return self.head(fused)
