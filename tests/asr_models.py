"""Tiny random speech models saved with save_pretrained, for the transcribe tests and benchmark.

Random weights transcribe garbage, but the same garbage from danlu and from transformers is a
real check that danlu runs the model, chunks and decodes exactly like transformers does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHARS = list("abcdefghijklmnopqrstuvwxyz'")


def make_wav2vec2(
    folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0, arch: str = "wav2vec2"
) -> Path:
    """A random Wav2Vec2ForCTC with a character vocabulary and its processor (the introduction's recipe).

    arch: "wav2vec2", "hubert" or "wavlm" (the same recipe with that model class)."""
    import torch
    import transformers
    from transformers import (
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    prefix = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM"}[arch]
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForCTC")

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for c in CHARS:
        vocab[c] = len(vocab)
    (folder / "vocab_src.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(
        str(folder / "vocab_src.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    torch.manual_seed(seed)
    cfg = config_class(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    model = model_class(cfg).eval()
    with torch.no_grad():
        # spread the head so frames disagree and the blank does not win everywhere: a non-empty,
        # varied transcript makes the comparison with transformers meaningful
        model.lm_head.weight.mul_(20.0)
        model.lm_head.bias.normal_(0.0, 1.0)
        model.lm_head.bias[0] -= 2.0
        model.lm_head.bias[4] += 2.5  # the word delimiter: transcripts with words
    model.save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(folder)
    (folder / "vocab_src.json").unlink()
    return folder


def noise_speech(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio: bursts of tones and noise with pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    env = (np.sin(2 * np.pi * 0.7 * t) > -0.3).astype(np.float32)
    x = 0.3 * np.sin(2 * np.pi * (200 + 100 * np.sin(2 * np.pi * 0.5 * t)) * t) + 0.05 * rng.standard_normal(
        n
    )
    return (x * env).astype(np.float32)


def make_whisper(folder: Path, seed: int = 0, max_length: int = 24) -> Path:
    """A random tiny Whisper with a byte-level BPE tokenizer built offline, and its processor."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = ["Ġ t", "h e", "Ġt he"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    src = folder / "src"
    src.mkdir(exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(
        str(src / "vocab.json"),
        str(src / "merges.txt"),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
    )
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    ids = {s: tok.convert_tokens_to_ids(s) for s in [eot, *specials]}
    torch.manual_seed(seed)
    cfg = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=ids[eot],
        bos_token_id=ids[eot],
        eos_token_id=ids[eot],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        # a random decoder repeats one token forever; larger embeddings (tied to the output
        # projection) and position embeddings make it say varied things
        model.model.decoder.embed_tokens.weight.mul_(3.0)
        model.model.decoder.embed_positions.weight.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[eot],
        pad_token_id=ids[eot],
        bos_token_id=ids[eot],
        max_length=max_length,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
    )
    model.save_pretrained(folder)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok
    ).save_pretrained(folder)
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    return folder
