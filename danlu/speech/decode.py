"""CTC decoding: one interface over every decoder danlu has.

`make_decoder(labels, DecoderOptions(...))` picks from DECODERS: `greedy` (best path), `beam`
(danlu's prefix beam search, optionally constrained to a lexicon) and `pyctcdecode` (beam search
with a KenLM model and hotwords). Every decoder has `kind`, `describe()` and
`hypothesis(log_probs) -> (text, words)`, words as (word, first frame, frame after its last).
`DecoderOptions.check` is the one validation of decoding options (task.decoder of a run,
--beam-size/--kenlm/--hotwords of transcribe and evaluate --manifest).

Prefix beam search (Hannun et al. 2014) keeps, for every label prefix, the probability of all
alignments that spell it and end in a blank (pb) or in its last label (pnb); a label equal to
the prefix's last one extends it only after a blank. With a lexicon, hypotheses also walk a
character trie of the allowed words: a character extends a hypothesis only along the trie, the
word separator (" ") only after a complete word, and a hypothesis that ends inside a word is not
a transcript. Every output is then a sequence of lexicon words: the constraint of flashlight's
(torchaudio's) lexicon decoder, here without a language model. pyctcdecode's word list does not
do this: its unigrams only weight a KenLM model's scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from danlu.errors import DanluError, choose_from

NEG_INF = float("-inf")


def _lse(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class Trie:
    """Words as label-id paths: node 0 is the root; terminal[n] marks a complete word."""

    def __init__(self, words: list[list[int]]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.terminal: list[bool] = [False]
        for word in words:
            node = 0
            for c in word:
                nxt = self.children[node].get(c)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][c] = nxt
                    self.children.append({})
                    self.terminal.append(False)
                node = nxt
            if node:
                self.terminal[node] = True


@dataclass
class Decoded:
    ids: list[int]  # label ids, blanks and repeats removed
    frames: list[int]  # the frame at which each label was first emitted
    score: float  # log-probability of the label sequence (summed over its alignments)
    # the best path: the last frame of each label's run (a word ends there); else = frames
    ends: list[int] = field(default_factory=list)


def greedy(log_probs: np.ndarray) -> Decoded:
    """Best path: argmax per frame, merge repeats, drop blanks. A 1-D array is the per-frame
    argmax already taken (chunked transcription keeps only that)."""
    lp = np.asarray(log_probs)
    best = lp if lp.ndim == 1 else lp.argmax(-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0
    frames = np.flatnonzero(keep)
    last = np.ones(len(best), dtype=bool)  # a run of one label ends where the next label differs
    last[:-1] = best[:-1] != best[1:]
    ends = np.flatnonzero(last & (best != 0))
    score = float(lp[np.arange(len(best)), best].sum()) if lp.ndim == 2 and len(best) else 0.0
    return Decoded([int(i) for i in best[frames]], [int(f) for f in frames], score, [int(e) for e in ends])


def beam_search(
    log_probs: np.ndarray,
    beam_size: int,
    *,
    trie: Trie | None = None,
    separator: int | None = None,
    token_min_logp: float = -12.0,
) -> Decoded:
    """Prefix beam search over (frames, labels) log-probabilities, blank = 0.

    trie: restrict hypotheses to its words (separated by `separator` when the vocabulary has
    one, else back to back). Labels below token_min_logp in a frame are not tried there (what
    pyctcdecode does too; e^-12 is negligible next to the labels that are)."""
    lp_all = np.asarray(log_probs, dtype=np.float64)
    # a prefix is an id into (parent, label, frame) tables; the empty prefix is 0
    parent, label, first = [-1], [-1], [-1]
    child: dict[tuple[int, int], int] = {}
    beams: dict[tuple[int, int], list[float]] = {(0, 0): [0.0, NEG_INF]}  # (prefix, node): [pb, pnb]
    for t in range(len(lp_all)):
        lp = lp_all[t]
        cands = [int(c) for c in np.flatnonzero(lp >= token_min_logp) if c != 0]
        blank = float(lp[0])
        nxt: dict[tuple[int, int], list[float]] = {}
        for (pid, node), (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            s = nxt.setdefault((pid, node), [NEG_INF, NEG_INF])
            s[0] = _lse(s[0], total + blank)
            last = label[pid]
            if last > 0:  # the last label again, no blank between: the same prefix
                s[1] = _lse(s[1], pnb + float(lp[last]))
            for c in cands:
                if trie is None:
                    targets = [0]
                elif c == separator:
                    targets = [0] if trie.terminal[node] else []
                else:
                    targets = []
                    n2 = trie.children[node].get(c)
                    if n2 is not None:
                        targets.append(n2)
                    if separator is None and trie.terminal[node]:  # next word, back to back
                        n3 = trie.children[0].get(c)
                        if n3 is not None and n3 != n2:
                            targets.append(n3)
                if not targets:
                    continue
                key = (pid, c)
                cid = child.get(key)
                if cid is None:
                    cid = child[key] = len(parent)
                    parent.append(pid)
                    label.append(c)
                    first.append(t)
                p = (pb if c == last else total) + float(lp[c])
                for n2 in targets:
                    e = nxt.setdefault((cid, n2), [NEG_INF, NEG_INF])
                    e[1] = _lse(e[1], p)
        if len(nxt) > beam_size:
            ranked = sorted(nxt.items(), key=lambda kv: _lse(kv[1][0], kv[1][1]), reverse=True)
            nxt = dict(ranked[:beam_size])
        beams = nxt
    finished = [
        (key, _lse(pb, pnb))
        for key, (pb, pnb) in beams.items()
        # a transcript ends after a complete word, not inside one nor on a separator (training
        # transcripts never end in a space)
        if trie is None or key[0] == 0 or trie.terminal[key[1]]
    ]
    if not finished:  # every hypothesis is inside a word: keep its complete words only
        (pid, _), _ = max(beams.items(), key=lambda kv: _lse(kv[1][0], kv[1][1]))
        ids, frames = _walk(pid, parent, label, first)
        cut = max((i for i, c in enumerate(ids) if c == separator), default=-1)
        return Decoded(ids[: max(cut, 0)], frames[: max(cut, 0)], NEG_INF)
    (pid, _), score = max(finished, key=lambda kv: kv[1])
    ids, frames = _walk(pid, parent, label, first)
    return Decoded(ids, frames, score)


def _walk(pid: int, parent: list[int], label: list[int], first: list[int]) -> tuple[list[int], list[int]]:
    ids, frames = [], []
    while pid > 0:
        ids.append(label[pid])
        frames.append(first[pid])
        pid = parent[pid]
    return ids[::-1], frames[::-1]


class CTCDecoder:
    """danlu's decoders over `vocab` (id = index + 1, blank 0): kind "greedy", or "beam" (prefix
    beam search of `beam_size`), constrained to `words` when given (a lexicon: every output word
    is one of them)."""

    def __init__(self, vocab: list[str], kind: str = "greedy", beam_size: int = 16, words: Any = None):
        self.vocab, self.kind, self.beam_size = list(vocab), kind, beam_size
        ids = {c: i + 1 for i, c in enumerate(self.vocab)}
        self.separator = ids.get(" ")
        self.words = sorted({w for w in (words or []) if w and all(c in ids for c in w) and " " not in w})
        self.trie = Trie([[ids[c] for c in w] for w in self.words]) if words is not None else None

    def describe(self) -> str:
        if self.kind == "greedy":
            return "greedy (best path)"
        if self.trie is None:
            return f"prefix beam search, beam {self.beam_size}"
        return f"lexicon beam search, beam {self.beam_size}, {len(self.words)} words"

    def decode(self, log_probs: Any) -> Decoded:
        lp = log_probs.float().cpu().numpy() if hasattr(log_probs, "cpu") else np.asarray(log_probs)
        if self.kind == "greedy" or len(lp) == 0 or lp.ndim == 1:
            return greedy(lp)
        return beam_search(lp, self.beam_size, trie=self.trie, separator=self.separator)

    def text(self, ids: list[int]) -> str:
        return "".join(self.vocab[i - 1] for i in ids if 0 < i <= len(self.vocab)).strip()

    def hypothesis(self, log_probs: Any) -> tuple[str, list[tuple[str, int, int]]]:
        """(text, words) of one utterance's log-probabilities (or best-path ids)."""
        d = self.decode(log_probs)
        return self.text(d.ids), self.words_with_frames(d, len(log_probs))

    def words_with_frames(self, d: Decoded, n_frames: int) -> list[tuple[str, int, int]]:
        """(word, first frame, frame after its last character) for each decoded word: the best
        path's words end where their last character's run of frames ends."""
        out: list[tuple[str, int, int]] = []
        chars: list[str] = []
        start = end = 0
        ends = d.ends or d.frames
        for i, f, e in zip(d.ids, d.frames, ends, strict=True):
            c = self.vocab[i - 1]
            if c == " ":
                if chars:
                    out.append(("".join(chars), start, end))
                chars = []
                continue
            if not chars:
                start = f
            chars.append(c)
            end = min(e + 1, n_frames)
        if chars:
            out.append(("".join(chars), start, end))
        return out


class PyCTCDecoder:
    """pyctcdecode's beam search over `labels` ("" = blank, " " = word separator), with a KenLM
    model and hotwords when given."""

    kind = "pyctcdecode"

    def __init__(
        self,
        labels: list[str],
        beam_size: int = 1,
        kenlm: str | None = None,
        hotwords: list[str] | None = None,
        hotword_weight: float = 10.0,
    ) -> None:
        import logging

        # pyctcdecode warns at import that kenlm is missing, and about unusual labels
        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        try:
            from pyctcdecode import build_ctcdecoder
        except ImportError:
            raise DanluError("CTC beam search needs pyctcdecode (pip install pyctcdecode)") from None
        self.beam_size, self.kenlm, self.hotwords, self.hotword_weight = (
            beam_size,
            kenlm,
            hotwords,
            hotword_weight,
        )
        self.decoder = build_ctcdecoder(list(labels), kenlm_model_path=kenlm)

    def describe(self) -> str:
        extra = (", KenLM " + Path(self.kenlm).name if self.kenlm else "") + (
            ", hotwords" if self.hotwords else ""
        )
        return f"pyctcdecode beam search, beam {self.beam_size}{extra}"

    def hypothesis(self, log_probs: Any) -> tuple[str, list[tuple[str, int, int]]]:
        lp = log_probs.float().cpu().numpy() if hasattr(log_probs, "cpu") else np.asarray(log_probs)
        beams = self.decoder.decode_beams(
            lp,
            beam_width=max(self.beam_size, 1),
            hotwords=self.hotwords or None,
            hotword_weight=self.hotword_weight,
            prune_history=True,  # what pyctcdecode's decode() does: only the best beam is kept
        )
        text, word_frames = beams[0][0], beams[0][2]
        return " ".join(text.split()), [(w, int(s), int(e)) for w, (s, e) in word_frames]


# --------------------------------------------------------------------------- the interface
class Decoder(Protocol):
    kind: str

    def describe(self) -> str: ...
    def hypothesis(self, log_probs: Any) -> tuple[str, list[tuple[str, int, int]]]: ...


@dataclass
class DecoderOptions:
    """How frame log-probabilities become text; `check` is the one validation of them."""

    type: str = "greedy"  # a DECODERS name
    beam_size: int = 16
    words: list[str] | None = None  # beam: a lexicon, every output word one of these
    kenlm: str | None = None  # pyctcdecode: a KenLM model (.arpa/.bin)
    hotwords: list[str] | None = None  # pyctcdecode: words to favour
    hotword_weight: float = 10.0

    def check(self) -> DecoderOptions:
        if self.type not in DECODERS:
            raise choose_from(self.type, DECODERS, "decoder")
        if self.beam_size < 1:
            raise DanluError(f"--beam-size must be at least 1, got {self.beam_size}")
        if self.hotword_weight < 0:
            raise DanluError(f"hotword_weight must be >= 0, got {self.hotword_weight}")
        if self.words is not None and self.type != "beam":
            raise DanluError("a lexicon constrains a beam search; use the beam decoder")
        if (self.kenlm or self.hotwords) and self.type != "pyctcdecode":
            raise DanluError("--kenlm and --hotwords are pyctcdecode's; use the pyctcdecode decoder")
        if self.kenlm is not None:
            if not Path(self.kenlm).is_file():
                raise DanluError(f"KenLM model '{self.kenlm}' does not exist")
            try:
                import kenlm  # noqa: F401
            except ImportError:
                raise DanluError(
                    f"--kenlm {self.kenlm} needs the kenlm package (pip install https://github.com/kpu/"
                    "kenlm/archive/master.zip); beam search without --kenlm works without it"
                ) from None
        return self


def _own(labels: list[str], o: DecoderOptions) -> CTCDecoder:
    return CTCDecoder(labels[1:], o.type, o.beam_size, o.words)


def _pyctcdecode(labels: list[str], o: DecoderOptions) -> PyCTCDecoder:
    return PyCTCDecoder(labels, o.beam_size, o.kenlm, o.hotwords, o.hotword_weight)


# name -> builder(labels, options); labels[0] is the blank ("")
DECODERS = {"greedy": _own, "beam": _own, "pyctcdecode": _pyctcdecode}


def make_decoder(labels: list[str], options: DecoderOptions) -> Decoder:
    """The decoder `options` name over `labels` (index = output unit; "" the blank at 0)."""
    options.check()
    return DECODERS[options.type](list(labels), options)  # type: ignore[return-value]
