"""models.build: RunConfig.model + Schema -> nn.Module (head size from the task)."""

from __future__ import annotations

from typing import Any

from torch import nn

from danlu.errors import DanluError
from danlu.registry import MODELS, UntrustedCodeError


def build(cfg: Any, schema: Any, out_dim: int, key: str = "model.type") -> nn.Module:
    """`key` is where cfg.type was read (an encoder of fusion: model.encoders.NAME.type)."""
    try:
        cls = MODELS.get(cfg.type, key)
    except UntrustedCodeError:
        raise
    except DanluError as e:
        raise DanluError(f"model.type: {e}") from None
    if ":" in cfg.type:  # user model: its own keyword arguments
        try:
            model = cls(schema=schema, out_dim=out_dim, **cfg.params)
        except TypeError as e:
            raise DanluError(f"model '{cfg.type}': {e}") from None
    else:
        model = cls(cfg, schema, out_dim)
    if not isinstance(model, nn.Module):
        raise DanluError(f"model '{cfg.type}' built a {type(model).__name__}, not a torch.nn.Module")
    return model
