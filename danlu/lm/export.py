"""`danlu export RUN --format hf OUT` for a language-model run: a Hugging Face GPT-2 folder
(config.json, model.safetensors, tokenizer files) that GPT2LMHeadModel and AutoTokenizer
load. danlu/export.py checks the arguments and sends language-model runs here."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from danlu.errors import DanluError, one_line
from danlu.lm.hf import export_hf
from danlu.lm.load import load_run


def export_lm_run(run_path: Path, out_dir: Path) -> Path:
    """Write the language-model run `run_path` to the new folder `out_dir`."""
    try:
        lm = load_run(run_path)
    except DanluError as e:
        if "language_modeling run" in str(e):
            raise DanluError(
                f"{e}; `danlu export --format hf` supports language-model (GPT) and"
                " pretrained_encoder runs only"
            ) from None
        raise
    from transformers import PreTrainedTokenizerFast

    tok_file = run_path / "tokenizer.json"
    raw = lm.tokenizer.tok
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    special: dict[str, str] = {}
    for name, tid in (("eos_token", eos), ("bos_token", eos), ("pad_token", pad if pad is not None else eos)):
        token = raw.id_to_token(tid) if isinstance(tid, int) else None
        if token is not None:
            special[name] = token
    tmp = Path(tempfile.mkdtemp(prefix=".danlu-tokenizer-"))
    try:
        try:
            hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), **special)
            hf_tok.save_pretrained(str(tmp))
        except Exception as e:
            raise DanluError(
                f"cannot convert '{tok_file}' to a transformers tokenizer: {one_line(e)}"
            ) from None
        ids = {k.replace("_token", "_token_id"): raw.token_to_id(v) for k, v in special.items()}
        export_hf(lm.model.to("cpu"), out_dir, tokenizer_dir=tmp, extra_config=ids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
