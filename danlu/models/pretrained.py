"""Fine-tuning a pretrained Hugging Face encoder (BERT family) with a task head.

With CLS pooling the network *is* transformers' `AutoModelForSequenceClassification` (for
BERT: the encoder, its pooler and a linear classifier), so `danlu export --format hf`
writes a folder that transformers loads with the same logits. Mean pooling puts a
linear head over the mean of the real tokens' last hidden states.

Strategies decide what trains:
  full       every weight (the run folder keeps all of them)
  head_only  the head only (pooler and classifier): the encoder is frozen
  freeze     the embeddings and the first `freeze_layers` layers are frozen
  lora       low-rank adapters (peft) on `lora.target_modules`, plus the head
`layer_decay` scales each layer's learning rate by decay^(layers above it) (ULMFiT/ELECTRA
style), through `param_groups`, which build_optimizer uses. Except for `full`, the run
folder keeps only what trained (`saved_keys`); the frozen rest is read from the base model.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.config import PretrainedEncoderConfig
from danlu.errors import DanluError

_LAYER = re.compile(r"\.layers?\.(\d+)\.")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers reports the new head's fresh weights on every load: expected here."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def base_folder(info: dict[str, Any]) -> Path | None:
    """The base model's folder: where training found it, else the reference resolved again."""
    folder = Path(info.get("folder", ""))
    if folder.is_dir() and (folder / "config.json").is_file():
        return folder
    from danlu.hub import model_folder

    try:
        return model_folder(info["base"])
    except DanluError:
        return None


class PretrainedEncoder(nn.Module):
    def __init__(self, cfg: PretrainedEncoderConfig, schema: Any, out_dim: int) -> None:
        super().__init__()
        info = getattr(schema, "pretrained", None)
        if getattr(schema, "input_kind", "") != "text" or not info:
            raise DanluError(
                "model.type pretrained_encoder reads a text column: add data.text: {column: ...}"
            )
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        self.cfg, self.out_dim = cfg, out_dim
        folder = base_folder(info)
        config = AutoConfig.for_model(**info["config"])
        if cfg.pooling == "cls":
            config.num_labels = out_dim
            if schema.task == "classification" and out_dim == schema.n_classes:
                config.id2label = dict(enumerate(schema.class_names))
                config.label2id = {n: i for i, n in enumerate(schema.class_names)}
            if schema.task == "regression":
                config.problem_type = "regression"
            if hasattr(config, "classifier_dropout"):
                config.classifier_dropout = cfg.head_dropout
        with _quiet_transformers():
            cls = AutoModelForSequenceClassification if cfg.pooling == "cls" else AutoModel
            if folder is not None:
                self.hf = cls.from_pretrained(str(folder), config=config, trust_remote_code=False)
            elif cfg.strategy == "full":  # every weight is in the run folder: the base's config is enough
                self.hf = cls.from_config(config, trust_remote_code=False)
            else:
                raise DanluError(
                    f"model.path: the base model '{info['base']}' is not available; a {cfg.strategy}"
                    " run keeps only what it trained and reads the rest from there"
                )
        self.head = None
        if cfg.pooling == "mean":
            self.drop = nn.Dropout(cfg.head_dropout)
            self.head = nn.Linear(config.hidden_size, out_dim)
        self.n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self._set_trainable()

    # ---- what trains
    def depth(self, name: str) -> int:
        """0 for embeddings, i + 1 for layer i, n_layers + 1 for the head (pooler, classifier)."""
        m = _LAYER.search(name)
        if m:
            return int(m.group(1)) + 1
        if "embeddings" in name:
            return 0
        return self.n_layers + 1

    def _set_trainable(self) -> None:
        cfg = self.cfg
        if cfg.strategy == "freeze" and cfg.freeze_layers > self.n_layers:
            raise DanluError(
                f"model.freeze_layers: {cfg.freeze_layers} but the encoder has {self.n_layers} layers"
            )
        if cfg.strategy == "lora":
            self._add_lora()
        for name, p in self.named_parameters():
            d = self.depth(name)
            if cfg.strategy == "head_only":
                p.requires_grad = d > self.n_layers
            elif cfg.strategy == "freeze":
                p.requires_grad = d > cfg.freeze_layers
            elif cfg.strategy == "lora":
                p.requires_grad = "lora_" in name or d > self.n_layers
            else:
                p.requires_grad = True

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        lc = self.cfg.lora
        assert lc is not None
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in self.hf.named_modules() if isinstance(m, nn.Linear)}
        )
        for target in lc.target_modules:
            if target not in linear:
                raise DanluError(
                    f"model.lora.target_modules: no module '{target}' in the model; its linear"
                    f" modules are: {', '.join(linear)}"
                )
        config = LoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules)
        )
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            self.hf = get_peft_model(self.hf, config)

    def saved_keys(self) -> set[str] | None:
        """The weights the run folder keeps: all for full fine-tuning, else what trained."""
        if self.cfg.strategy == "full":
            return None
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Per depth (head first), with and without weight decay; layer_decay scales the lr."""
        decay = self.cfg.layer_decay or 1.0
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            d = self.depth(name) if self.cfg.layer_decay else self.n_layers + 1
            wd = p.ndim >= 2 and weight_decay > 0
            g = groups.setdefault(
                (d, wd),
                {
                    "params": [],
                    "weight_decay": weight_decay if wd else 0.0,
                    "lr": lr * decay ** (self.n_layers + 1 - d),
                },
            )
            g["params"].append(p)
        return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]

    # ---- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask)
        if self.head is None:
            return out.logits
        m = attention_mask[..., None].to(out.last_hidden_state.dtype)
        pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(self.drop(pooled))

    # ---- export
    def merge_lora(self) -> None:
        """Fold LoRA adapters into the weights: one plain transformers model (ONNX export)."""
        if self.cfg.strategy == "lora" and hasattr(self.hf, "merge_and_unload"):
            self.hf = self.hf.merge_and_unload()

    def export_hf(self, out_dir: Path, tokenizer_dir: Path | None, tokenizer_file: Path) -> None:
        """A transformers folder: AutoModelForSequenceClassification gives the same logits
        (LoRA adapters merged into the weights)."""
        if self.head is not None:
            raise DanluError(
                "export --format hf needs model.pooling: cls (transformers' sequence-classification"
                " head pools the [CLS] token); this run pools by mean"
            )
        model = self.hf.merge_and_unload() if self.cfg.strategy == "lora" else self.hf
        with _quiet_transformers():
            model.save_pretrained(str(out_dir))
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        if tokenizer_dir is not None:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
        else:
            tok = PreTrainedTokenizerFast(
                tokenizer_file=str(tokenizer_file),
                unk_token="[UNK]",
                pad_token="[PAD]",
                cls_token="[CLS]",
                sep_token="[SEP]",
                mask_token="[MASK]",
            )
        tok.save_pretrained(str(out_dir))
