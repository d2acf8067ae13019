"""Convolutional networks for images: a plain `cnn` and a small `resnet`.

Both read the input shape (channels, height, width) from the Schema and end in global
average pooling and one linear layer of `out_dim` outputs, so any image size works.
"""

from __future__ import annotations

import torch
from torch import nn

from danlu.config import CNNConfig, ResNetConfig
from danlu.data.tabular import Schema
from danlu.errors import DanluError
from danlu.registry import ACTIVATIONS


def image_shape(schema: Schema, model: str) -> tuple[int, int, int]:
    """(C, H, W) of the data, or an error saying what the data holds instead."""
    shape = getattr(schema, "image_shape", None)
    if getattr(schema, "input_kind", "tabular") != "image" or not shape:
        kind = getattr(schema, "input_kind", "tabular")
        holds = f"{kind} data" + (f" with {schema.n_inputs} input columns" if kind == "tabular" else "")
        raise DanluError(
            f"model.type {model} takes images, but the data holds {holds}; give image data"
            " (a folder of class sub-folders, a CSV with data.images.column, an .npy/.npz, or"
            " source: digits_images) or use model.type mlp"
        )
    c, h, w = (int(v) for v in shape)
    return c, h, w


class ConvBlock(nn.Module):
    """`convs` x (conv -> batch norm -> activation), then 2x2 pooling when asked."""

    def __init__(self, n_in: int, n_out: int, cfg: CNNConfig, pool: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(cfg.convs_per_block):
            layers += [
                nn.Conv2d(
                    n_in if i == 0 else n_out,
                    n_out,
                    cfg.kernel_size,
                    padding=cfg.kernel_size // 2,
                    bias=not cfg.batch_norm,
                ),
                nn.BatchNorm2d(n_out) if cfg.batch_norm else nn.Identity(),
                ACTIVATIONS.get(cfg.activation)(),
            ]
        if pool and cfg.pooling == "max":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        elif pool and cfg.pooling == "avg":
            layers.append(nn.AvgPool2d(2, ceil_mode=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig, schema: Schema, out_dim: int) -> None:
        super().__init__()
        c, _, _ = image_shape(schema, "cnn")
        blocks, width = [], c
        for i, n in enumerate(cfg.channels):
            blocks.append(ConvBlock(width, n, cfg, pool=i < len(cfg.channels) - 1))
            width = n
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.blocks(x)).flatten(1)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection (He et al. 2016); a 1x1
    projection on the skip when the stride or width changes."""

    def __init__(self, n_in: int, n_out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.act = ACTIVATIONS.get(activation)()
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.skip = nn.Sequential(
                nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False), nn.BatchNorm2d(n_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig, schema: Schema, out_dim: int) -> None:
        super().__init__()
        c, h, w = image_shape(schema, "resnet")
        width = cfg.widths[0]
        large = cfg.stem == "large" or (cfg.stem == "auto" and min(h, w) >= 96)
        if large:  # ImageNet-sized inputs: 7x7 stride 2, then 3x3 max pool stride 2
            self.stem = nn.Sequential(
                nn.Conv2d(c, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                ACTIVATIONS.get(cfg.activation)(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:  # small images (digits, CIFAR): keep the resolution
            self.stem = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                ACTIVATIONS.get(cfg.activation)(),
            )
        stages = []
        for i, (n, out) in enumerate(zip(cfg.blocks, cfg.widths, strict=True)):
            for j in range(n):
                stages.append(BasicBlock(width, out, 2 if i > 0 and j == 0 else 1, cfg.activation))
                width = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # each block starts as the identity (Goyal et al. 2017)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.stages(self.stem(x))).flatten(1)))
