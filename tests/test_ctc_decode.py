"""CTC decoding (danlu/speech/decode.py) against brute force: the probability of a label sequence is
torch's CTC loss (the sum over all its alignments), and the best sequence is found by scoring
every candidate the decoder may output."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danlu.config import load as load_config
from danlu.errors import DanluError
from danlu.speech.decode import CTCDecoder, greedy

VOCAB = list("abno ")
IDS = {c: i + 1 for i, c in enumerate(VOCAB)}


def sequence_logp(lp: np.ndarray, text: str, ids: dict[str, int] = IDS) -> float:
    """log p(text | frames): minus torch's CTC loss (blank 0)."""
    if not text:
        return float(lp[:, 0].sum())
    y = torch.tensor([[ids[c] for c in text]])
    loss = F.ctc_loss(
        torch.tensor(lp)[:, None], y, torch.tensor([len(lp)]), torch.tensor([len(text)]), reduction="sum"
    )
    return -float(loss)


def random_log_probs(rng: np.random.Generator, frames: int, vocab: int) -> np.ndarray:
    return torch.log_softmax(torch.tensor(rng.normal(0.0, 2.0, (frames, vocab + 1))), -1).numpy()


def best_of(lp: np.ndarray, candidates: list[str]) -> tuple[str, float]:
    scores = {c: sequence_logp(lp, c) for c in candidates}
    best = max(scores, key=scores.__getitem__)
    return best, scores[best]


def test_lexicon_beam_search_finds_the_most_probable_word_sequence() -> None:
    words = ["a", "ab", "ban", "no", "on"]
    candidates = [""] + [" ".join(ws) for n in (1, 2, 3) for ws in itertools.product(words, repeat=n)]
    decoder = CTCDecoder(VOCAB, "beam", beam_size=1000, words=words)  # wide enough to be exhaustive
    rng = np.random.default_rng(0)
    for _ in range(20):
        lp = random_log_probs(rng, 7, len(VOCAB))
        text, score = best_of(lp, candidates)
        got = decoder.decode(lp)
        assert decoder.text(got.ids) == text
        assert got.score == pytest.approx(score, abs=1e-6)
        # greedy may spell a non-word; the lexicon decoder never does
        assert set(decoder.text(got.ids).split()) <= set(words)


def test_unconstrained_beam_search_finds_the_most_probable_string() -> None:
    vocab = ["a", "b"]
    candidates = ["".join(p) for n in range(6) for p in itertools.product("ab", repeat=n)]
    decoder = CTCDecoder(vocab, "beam", beam_size=500)
    rng = np.random.default_rng(1)
    for _ in range(10):
        lp = random_log_probs(rng, 5, 2)
        scores = {c: sequence_logp(lp, c, {"a": 1, "b": 2}) for c in candidates}
        got = decoder.decode(lp)
        assert decoder.text(got.ids) == max(scores, key=scores.__getitem__)


def test_greedy_is_the_best_path_and_lexicon_fixes_a_misspelling() -> None:
    # frames spell "ob" by best path, but "no" is the only word and nearly as likely
    p = {"": 0.0, "o": 0.0, "b": 0.0, "n": 0.0}
    rows = [{"o": 0.6, "n": 0.4}, {"": 0.9, "o": 0.1}, {"b": 0.5, "o": 0.45, "": 0.05}]
    lp = np.full((3, len(VOCAB) + 1), np.log(1e-6))
    for t, row in enumerate(rows):
        for c, v in {**p, **row}.items():
            if v:
                lp[t, 0 if c == "" else IDS[c]] = np.log(v)
    assert CTCDecoder(VOCAB).text(greedy(lp).ids) == "ob"
    lexicon = CTCDecoder(VOCAB, "beam", 8, words=["no", "on"])
    assert lexicon.text(lexicon.decode(lp).ids) == "no"
    assert lexicon.describe() == "lexicon beam search, beam 8, 2 words"


def test_words_back_to_back_without_a_separator() -> None:
    vocab = list("abn")  # no space: words follow each other directly
    words = ["ab", "n"]
    decoder = CTCDecoder(vocab, "beam", 1000, words=words)
    ids = {c: i + 1 for i, c in enumerate(vocab)}
    candidates = [""] + ["".join(ws) for n in (1, 2, 3) for ws in itertools.product(words, repeat=n)]
    rng = np.random.default_rng(2)
    for _ in range(10):
        lp = random_log_probs(rng, 6, 3)

        assert decoder.text(decoder.decode(lp).ids) == max(
            candidates, key=lambda c: sequence_logp(lp, c, ids)
        )


def test_lexicon_needs_beam_in_the_config() -> None:
    with pytest.raises(DanluError, match="task.decoder"):
        load_config({"task": {"decoder": {"type": "greedy", "lexicon": "train"}}, "data": {"path": "x"}})


def test_one_decoder_interface_over_greedy_beam_and_pyctcdecode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """make_decoder picks from one table by DecoderOptions, validated once; every decoder gives
    (text, words with frames). Greedy's words are hand-traced; the lexicon beam equals CTCDecoder's
    own; pyctcdecode equals pyctcdecode called directly on the same labels."""
    from danlu.speech.decode import DECODERS, DecoderOptions, make_decoder

    assert set(DECODERS) == {"greedy", "beam", "pyctcdecode"}
    labels = ["", *VOCAB]
    # frames: a a _ n n " " o n _ -> "an on"; "an" spans frames 0-4, "on" frames 6-7
    path = [IDS["a"], IDS["a"], 0, IDS["n"], IDS["n"], IDS[" "], IDS["o"], IDS["n"], 0]
    lp = np.full((len(path), len(labels)), np.log(0.01))
    lp[np.arange(len(path)), path] = np.log(0.9)
    greedy_decoder = make_decoder(labels, DecoderOptions())
    assert greedy_decoder.kind == "greedy" and greedy_decoder.describe() == "greedy (best path)"
    assert greedy_decoder.hypothesis(lp) == ("an on", [("an", 0, 5), ("on", 6, 8)])
    # the best path from the per-frame argmax alone (what chunked transcription keeps) is the same
    assert greedy_decoder.hypothesis(lp.argmax(-1)) == ("an on", [("an", 0, 5), ("on", 6, 8)])

    beam = make_decoder(labels, DecoderOptions("beam", 8, ["no", "on"]))
    assert beam.describe() == "lexicon beam search, beam 8, 2 words"
    own = CTCDecoder(VOCAB, "beam", 8, words=["no", "on"])
    rng = np.random.default_rng(4)
    for _ in range(5):
        r = random_log_probs(rng, 7, len(VOCAB))
        assert beam.hypothesis(r)[0] == own.text(own.decode(r).ids)

    pytest.importorskip("pyctcdecode")
    from pyctcdecode import build_ctcdecoder

    py = make_decoder(labels, DecoderOptions("pyctcdecode", 8, hotwords=["no"]))
    assert py.kind == "pyctcdecode" and py.describe() == "pyctcdecode beam search, beam 8, hotwords"
    direct = build_ctcdecoder(labels)
    for _ in range(5):
        r = random_log_probs(rng, 9, len(VOCAB)).astype(np.float32)
        expected = direct.decode(r, beam_width=8, hotwords=["no"], hotword_weight=10.0)
        assert py.hypothesis(r)[0] == " ".join(expected.split())

    # one validation, each error naming what is wrong
    bad = [
        (DecoderOptions("viterbi"), "unknown decoder 'viterbi'"),
        (DecoderOptions("beam", 0), "--beam-size must be at least 1"),
        (DecoderOptions("greedy", words=["no"]), "a lexicon constrains a beam search"),
        (DecoderOptions("beam", kenlm="lm.arpa"), "pyctcdecode's"),
        (DecoderOptions("pyctcdecode", kenlm=str(tmp_path / "missing.arpa")), "does not exist"),
        (DecoderOptions("pyctcdecode", hotword_weight=-1.0), "hotword_weight must be >= 0"),
    ]
    for options, message in bad:
        with pytest.raises(DanluError, match=message):
            make_decoder(labels, options)
    # transcribe's options are checked by the same validation
    from danlu.speech.recognizer import speech_options

    with pytest.raises(DanluError, match="--beam-size must be at least 1, got 0"):
        speech_options(beam_size=0)
    with pytest.raises(DanluError, match="hotword_weight must be >= 0"):
        speech_options(beam_size=4, hotword_weight=-2.0)
