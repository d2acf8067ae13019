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
