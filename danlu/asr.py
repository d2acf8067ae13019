"""Speech recognition: audio in, text with timestamps out (`danlu transcribe`, `danlu.transcribe`).

A speech model reference (see `resolve_speech`) is one of
  - a Hugging Face CTC folder (Wav2Vec2, HuBERT, WavLM ...): AutoModelForCTC + AutoProcessor, kind "hf-ctc";
  - a Hugging Face Whisper folder: WhisperForConditionalGeneration + WhisperProcessor, kind "hf-whisper";
  - a CTranslate2 Whisper folder (model.bin + config.json, no PyTorch weights): faster-whisper,
    kind "ct2-whisper";
  - a danlu run folder of a `task: speech_recognition` run: its predictor, kind "danlu-ctc";
  - a hub id when online (found through danlu.modelref, the place `danlu generate` resolves too).

Long audio never sits in memory whole. CTC models see overlapping chunks streamed from the file;
each chunk's logits lose the frames of the overlap's outer halves and the rest are concatenated,
so every frame is decoded once (the stitching transformers' ASR pipeline does with
chunk_length_s/stride_length_s, and with the same tiling, so results match it); on CPU two chunks
run at once, each on a thread with one torch thread (see _map_batches). Whisper models see
blocks of several minutes, each transcribed with the model's own 30-second long-form decoding;
neighbouring blocks overlap and are cut at the overlap's middle, word by word where the model gives
word times, segment by segment otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.audio import AudioChunk, iter_audio_chunks, load_audio
from danlu.errors import DanluError, choose_from

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt")
TIMESTAMPS = ("word", "segment", "none")
KINDS = ("hf-ctc", "hf-whisper", "ct2-whisper", "danlu-ctc")
CTC_CHUNK_SECONDS = 30.0  # CTC default chunk; stride (each side) is chunk / 6 like transformers
WHISPER_BLOCK_SECONDS = 300.0  # audio handed to Whisper at once: memory is bounded by this
WHISPER_BLOCK_OVERLAP = 20.0
# chunks per forward pass on a GPU, where a larger batch fills the device (the convolutional
# front end's peak is about 200 MB per 30 s chunk for a base-size model)
CTC_BATCH = 4
# on CPU: passes of one chunk, CTC_PARALLEL of them at once, each on one torch thread (see
# _map_batches). Against passes of 4 chunks over two threads: as fast for a random base-size
# Wav2Vec2 and 2-5 % faster for the benchmark's 4 x 256 one (ops this size use two threads well),
# with half the activation memory; 1.75x faster for a danlu GRU run, whose small ops do not
CTC_PARALLEL = 2
_SEGMENT_GAP = 0.8  # CTC: a pause this long (seconds) between words starts a new segment
_SEGMENT_MAX = 30.0

Progress = Callable[[float], None]  # called with seconds of audio done since the last call


# ---------------------------------------------------------------------------- results


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    """What `danlu.transcribe` returns for one input: the text and its timed segments."""

    text: str
    segments: list[Segment]
    duration: float  # seconds of audio
    source: str = ""
    language: str | None = None
    elapsed: float = 0.0  # seconds spent transcribing

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration (lower is faster)."""
        return self.elapsed / self.duration if self.duration else 0.0

    def to_dict(self, words: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not words:
            for s in d["segments"]:
                s.pop("words", None)
        return d

    def to_json(self, words: bool = True) -> str:
        return json.dumps(self.to_dict(words), ensure_ascii=False, indent=2)

    def to_srt(self) -> str:
        blocks = [
            f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(self.segments, 1)
        ]
        return "\n".join(blocks)

    def to_vtt(self) -> str:
        blocks = [
            f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in self.segments
        ]
        return "WEBVTT\n\n" + "\n".join(blocks)

    def render(self, fmt: str, words: bool = True) -> str:
        if fmt == "txt":
            return self.text.strip() + "\n"
        if fmt == "json":
            return self.to_json(words) + "\n"
        if fmt == "srt":
            return self.to_srt()
        if fmt == "vtt":
            return self.to_vtt()
        raise choose_from(fmt, OUTPUT_FORMATS, "output format")


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


@dataclass
class Options:
    """Decoding options shared by every model kind (None: the model's own default)."""

    language: str | None = None
    # CTC: 1 = greedy (default; a danlu run: its task.decoder, a lexicon kept); Whisper: faster-whisper's
    # 5, HF's config
    beam_size: int | None = None
    timestamps: str = "segment"
    chunk_length: float | None = None  # CTC chunk seconds (default 30); Whisper: block seconds (300)
    batch_size: int | None = None  # CTC chunks per forward pass (default: 1 on CPU, CTC_BATCH on GPU)
    kenlm: str | None = None  # CTC beam search: KenLM model (.arpa/.bin)
    hotwords: list[str] | None = None  # CTC beam search: words to favour
    hotword_weight: float = 10.0

    def check(self) -> Options:
        if self.timestamps not in TIMESTAMPS:
            raise choose_from(self.timestamps, TIMESTAMPS, "--timestamps value")
        if self.beam_size is not None and self.beam_size < 1:
            raise DanluError(f"--beam-size must be at least 1, got {self.beam_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise DanluError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.chunk_length is not None and self.chunk_length <= 0:
            raise DanluError(f"--chunk-length must be positive seconds, got {self.chunk_length}")
        if self.hotword_weight < 0:
            raise DanluError(f"hotword_weight must be >= 0, got {self.hotword_weight}")
        return self


def make_options(**options: Any) -> Options:
    names = set(Options.__dataclass_fields__)
    unknown = sorted(set(options) - names)
    if unknown:
        raise choose_from(unknown[0], names, "transcribe option")
    if isinstance(options.get("hotwords"), str):
        options["hotwords"] = [options["hotwords"]]
    return Options(**options).check()


# ---------------------------------------------------------------------------- model resolution

_TORCH_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_CTC_TYPES = {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "sew", "sew-d", "unispeech", "unispeech-sat"}


def speech_kind(path: Path) -> str:
    """Which kind of speech model folder `path` is (see KINDS); a DanluError when none."""
    if (path / "model.json").is_file() or (path / "config.yaml").is_file():
        return "danlu-ctc"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DanluError(
            f"'{path}' has no config.json; expected a Hugging Face speech model folder (Wav2Vec2-style CTC "
            "or Whisper), a CTranslate2 Whisper folder (model.bin) or a danlu speech run folder"
        )
    has_torch = any((path / f).is_file() for f in _TORCH_WEIGHTS) or any(path.glob("*.safetensors"))
    if (path / "model.bin").is_file() and not has_torch:
        return "ct2-whisper"
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(f"cannot read '{config_file}': {e}") from None
    model_type = str(cfg.get("model_type", ""))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if model_type == "whisper":
        return "hf-whisper"
    if model_type in _CTC_TYPES or any(a.endswith("ForCTC") for a in archs):
        return "hf-ctc"
    raise DanluError(
        f"'{path}' holds a '{model_type or '?'}' model ({', '.join(archs) or 'no architectures'}), not a "
        "speech recognizer; expected a CTC model (Wav2Vec2, HuBERT, WavLM) or Whisper"
    )


def _require(path: Path, what: str, groups: Iterable[tuple[str, ...]]) -> None:
    """Each group is satisfied by any one of its files; name every unsatisfied group."""
    missing = [" or ".join(g) for g in groups if not any((path / f).is_file() for f in g)]
    if missing:
        raise DanluError(
            f"'{path}' lacks {'; '.join(missing)} ({what}); save the processor into the model folder "
            "(processor.save_pretrained(folder))"
        )


def check_files(path: Path, kind: str) -> None:
    """The processor and vocabulary files a kind of folder needs, each missing one named."""
    processor = ("preprocessor_config.json", "processor_config.json")
    if kind == "hf-ctc":
        _require(
            path,
            "the CTC processor: feature extractor and vocabulary",
            [processor, ("vocab.json", "tokenizer.json")],
        )
    elif kind == "hf-whisper":
        _require(
            path,
            "the Whisper processor: feature extractor and tokenizer",
            [processor, ("tokenizer.json", "vocab.json")],
        )
    elif kind == "ct2-whisper":  # without tokenizer.json faster-whisper would fetch one from the hub
        _require(path, "the Whisper tokenizer", [("tokenizer.json",)])


def resolve_speech(
    ref: str | Path, *, device: str | None = None, trust_remote_code: bool = False, trust_code: bool = False
) -> SpeechModel:
    """Load the speech model `ref` names (see the module docstring). trust_remote_code: a
    Hugging Face folder may run its own Python code; trust_code: a danlu run folder may name
    user code in its model.json. Both only for folders you trust."""
    from danlu.hub import locate_model

    path = locate_model(ref)
    if not path.is_dir():
        raise DanluError(f"'{path}' is a file; give the model's folder")
    kind = speech_kind(path)
    check_files(path, kind)  # before torch is imported: a broken folder fails fast
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "hf-ctc":
        return HFCTCModel(path, device, trust_remote_code)
    if kind == "hf-whisper":
        return HFWhisperModel(path, device, trust_remote_code)
    if kind == "ct2-whisper":
        return FasterWhisperModel(path, device)
    return RunCTCModel(path, device, trust_code)


_CACHE: dict[tuple[Any, ...], SpeechModel] = {}


def load_cached(
    ref: str | Path, *, device: str | None = None, trust_remote_code: bool = False, trust_code: bool = False
) -> SpeechModel:
    p = Path(str(ref)).expanduser()
    key = (str(p.resolve()) if p.exists() else str(ref), device, trust_remote_code, trust_code)
    if key not in _CACHE:
        _CACHE[key] = resolve_speech(
            ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code
        )
    return _CACHE[key]


# ---------------------------------------------------------------------------- models


class SpeechModel:
    """What every kind provides: transcribe a file (streamed) or an in-memory signal."""

    kind: str = ""
    sample_rate: int = 16000
    path: Path

    def transcribe_chunks(
        self,
        chunks: Callable[[float, float], Iterator[AudioChunk]],
        duration: float,
        opts: Options,
        progress: Progress,
    ) -> tuple[str, list[Segment], str | None]:
        """chunks(chunk_seconds, overlap_seconds) streams the audio; returns text, segments, language."""
        raise NotImplementedError

    def describe_decoder(self, opts: Options) -> str:
        """The decoding `opts` select, in words (stated in evaluation outputs)."""
        if opts.beam_size is None:
            return "the model's own generation settings"
        return "greedy" if opts.beam_size == 1 else f"beam search, beam {opts.beam_size}"


# -- CTC


def _pyctcdecode_wanted(opts: Options) -> bool:
    """A beam wider than 1, a KenLM model or hotwords: CTC decoding through pyctcdecode."""
    return bool((opts.beam_size or 1) > 1 or opts.kenlm or opts.hotwords)


Batch = list[tuple[np.ndarray, int, int]]  # chunks of equal length: (samples, left, right overlap)


def _chunk_batches(
    chunks: Callable[[float, float], Iterator[AudioChunk]], chunk: int, stride: int, size: int, rate: int
) -> Iterator[Batch]:
    """The streamed chunks in batches of up to `size`, each with the overlap (samples) that its
    left and right edges give up to the neighbours."""
    pending: Batch = []
    for c in chunks(chunk / rate, 2 * stride / rate):
        left = 0 if c.start_sample == 0 else stride
        right = 0 if c.is_last else stride
        if len(c.samples) <= left:  # only overlap remains: already covered (as the pipeline does)
            continue
        # full-length chunks batch together; a shorter last chunk runs alone (no padding, so
        # group-norm models see exactly what they would unbatched)
        if pending and len(pending[0][0]) != len(c.samples):
            yield pending
            pending = []
        pending.append((c.samples, left, right))
        if len(pending) >= size:
            yield pending
            pending = []
    if pending:
        yield pending


def _map_batches(
    fn: Callable[[Batch], list[np.ndarray]], batches: Iterator[Batch], workers: int
) -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """(batch, fn(batch)) in order. With workers > 1 (and torch allowed that many threads) up to
    that many batches run at once, each on a thread with one torch thread; torch's kernels release
    the GIL. Small ops (a danlu GRU run's) split poorly over threads, so this is 1.75x faster
    there, and no slower for larger ones. At most workers + 1 batches are in flight, so memory
    stays flat however long the file."""
    import torch

    workers = min(workers, torch.get_num_threads())
    first = next(batches, None)
    second = next(batches, None) if first is not None and workers > 1 else None
    if second is None:  # one batch, or one thread: all in this thread, as torch is set up
        for b in itertools.chain([first] if first is not None else [], batches):
            yield b, fn(b)
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    threads = torch.get_num_threads()
    # set_num_threads(1) in a worker also becomes the default of every thread started later, so
    # the caller's setting is put back at the end
    pool = ThreadPoolExecutor(
        workers, thread_name_prefix="danlu-ctc", initializer=torch.set_num_threads, initargs=(1,)
    )
    flight: deque[tuple[Batch, Future[list[np.ndarray]]]] = deque()
    try:
        for b in itertools.chain([first, second], batches):
            flight.append((b, pool.submit(fn, b)))
            if len(flight) > workers:  # one queued behind the running ones: no worker waits
                b, f = flight.popleft()
                yield b, f.result()
        while flight:
            b, f = flight.popleft()
            yield b, f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


class CTCModel(SpeechModel):
    """Shared CTC inference: chunked logits, frame stitching, greedy or beam decoding."""

    align_to: int = 320  # samples per output frame
    labels: list[str]  # index -> symbol for pyctcdecode ("" blank, " " word separator)

    def chunk_lengths(self, chunk_length: float | None) -> tuple[int, int]:
        """(chunk, stride) in samples, rounded to whole frames like transformers' pipeline."""
        seconds = CTC_CHUNK_SECONDS if chunk_length is None else chunk_length
        a = self.align_to
        chunk = int(round(seconds * self.sample_rate / a) * a)
        stride = int(round(seconds / 6 * self.sample_rate / a) * a)
        if chunk <= 2 * stride or chunk <= 0:
            raise DanluError(f"--chunk-length {seconds} s is too short for this model; use at least 1 s")
        return chunk, stride

    def frames(self, n_samples: int, logits: Any) -> int:
        """Output frames that n_samples of input make (transformers' rescale_stride rule)."""
        return int(round(n_samples / self.align_to))

    def forward(self, batch: list[np.ndarray]) -> list[Any]:
        """Per-chunk logits (frames, vocab) as torch tensors; chunks in a batch have equal lengths."""
        raise NotImplementedError

    def decode_greedy(self, ids: np.ndarray, want_words: bool) -> tuple[str, list[Word]]:
        raise NotImplementedError

    def batching(self, opts: Options) -> tuple[int, int]:
        """(chunks per forward pass, passes at once): on CPU several single-threaded passes side by
        side, elsewhere one pass of a larger batch."""
        if str(getattr(self, "device", "cpu")) == "cpu":
            return opts.batch_size or 1, CTC_PARALLEL
        return opts.batch_size or CTC_BATCH, 1

    def transcribe_chunks(self, chunks, duration, opts, progress):  # type: ignore[no-untyped-def]
        import torch

        own = self.own_decoder(opts)
        beam = own is None and _pyctcdecode_wanted(opts)
        decoder = self._beam_decoder(opts) if beam else own
        chunk, stride = self.chunk_lengths(opts.chunk_length)
        kept: list[Any] = []  # per chunk: argmax ids (greedy) or log-probs (beam), overlap dropped

        def run(items: Batch) -> list[np.ndarray]:
            with torch.inference_mode():
                logits = self.forward([x for x, _, _ in items])
                out = []
                for (x, left, right), lg in zip(items, logits, strict=True):
                    token_n = self.frames(len(x), lg)
                    lf = int(round(left / len(x) * token_n))
                    rf = int(round(right / len(x) * token_n))
                    lg = lg[lf : token_n - rf].float()
                    out.append(torch.log_softmax(lg, -1) if decoder else lg.argmax(-1))
            return [o.cpu().numpy() for o in out]

        size, workers = self.batching(opts)
        batches = _chunk_batches(chunks, chunk, stride, size, self.sample_rate)
        # closing: an error here (or Ctrl-C) stops the workers and restores torch's threads now
        with contextlib.closing(_map_batches(run, batches, workers)) as results:
            for items, out in results:
                kept += out
                progress(sum(len(x) - left - right for x, left, right in items) / self.sample_rate)
        if not kept:
            return "", [], None
        want_words = opts.timestamps != "none"
        if own is not None:
            text, words = self._own_decode(own, np.concatenate(kept, 0))
        elif decoder is not None:
            text, words = self._beam_decode(decoder, np.concatenate(kept, 0), opts)
        else:
            text, words = self.decode_greedy(np.concatenate(kept, 0), want_words)
        return text, _segments_from_words(text, words, duration, opts.timestamps), None

    def own_decoder(self, opts: Options) -> Any:
        """A decoder of the model's own (danlu.ctc_decode.CTCDecoder) that replaces greedy and
        pyctcdecode decoding; None: those."""
        return None

    def describe_decoder(self, opts: Options) -> str:
        own = self.own_decoder(opts)
        if own is not None:
            return own.describe()
        if _pyctcdecode_wanted(opts):
            extra = (", KenLM " + Path(opts.kenlm).name if opts.kenlm else "") + (
                ", hotwords" if opts.hotwords else ""
            )
            return f"pyctcdecode beam search, beam {opts.beam_size or 1}{extra}"
        return "greedy (best path)"

    def _own_decode(self, decoder: Any, logprobs: np.ndarray) -> tuple[str, list[Word]]:
        best = decoder.decode(logprobs)
        fs = self.align_to / self.sample_rate
        words = [
            Word(_t(a * fs), _t(b * fs), w) for w, a, b in decoder.words_with_frames(best, len(logprobs))
        ]
        return decoder.text(best.ids), words

    def _beam_decoder(self, opts: Options) -> Any:
        import logging

        # pyctcdecode warns at import that kenlm is missing, and about unusual labels
        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        try:
            from pyctcdecode import build_ctcdecoder
        except ImportError:
            raise DanluError("CTC beam search needs pyctcdecode (pip install pyctcdecode)") from None
        if opts.kenlm is not None:
            if not Path(opts.kenlm).is_file():
                raise DanluError(f"KenLM model '{opts.kenlm}' does not exist")
            try:
                import kenlm  # noqa: F401
            except ImportError:
                raise DanluError(
                    f"--kenlm {opts.kenlm} needs the kenlm package (pip install https://github.com/kpu/"
                    "kenlm/archive/master.zip); beam search without --kenlm works without it"
                ) from None
        return build_ctcdecoder(self.labels, kenlm_model_path=opts.kenlm)

    def _beam_decode(self, decoder: Any, logprobs: np.ndarray, opts: Options) -> tuple[str, list[Word]]:
        beams = decoder.decode_beams(
            logprobs,
            beam_width=max(opts.beam_size or 1, 1),
            hotwords=opts.hotwords or None,
            hotword_weight=opts.hotword_weight,
            prune_history=True,  # what pyctcdecode's decode() does: only the best beam is kept
        )
        text, _, word_frames = beams[0][0], beams[0][1], beams[0][2]
        fs = self.align_to / self.sample_rate
        words = [Word(_t(s * fs), _t(e * fs), w) for w, (s, e) in word_frames]
        return " ".join(text.split()), words


def _segments_from_words(text: str, words: list[Word], duration: float, timestamps: str) -> list[Segment]:
    """Split at pauses (CTC has no segment notion of its own); one segment when no word times."""
    if not words or timestamps == "none":
        return [Segment(0.0, round(duration, 3), text)] if text else []
    segments: list[Segment] = []
    group: list[Word] = [words[0]]
    for w in words[1:]:
        if w.start - group[-1].end >= _SEGMENT_GAP or w.end - group[0].start > _SEGMENT_MAX:
            segments.append(_segment(group, timestamps))
            group = []
        group.append(w)
    segments.append(_segment(group, timestamps))
    return segments


def _segment(words: list[Word], timestamps: str) -> Segment:
    return Segment(
        words[0].start,
        words[-1].end,
        " ".join(w.text for w in words),
        list(words) if timestamps == "word" else [],
    )


def _load_error(what: str, path: Path, e: BaseException, trust_remote_code: bool) -> str:
    if "trust_remote_code" in str(e) and not trust_remote_code:  # transformers' refusal of auto_map code
        return (
            f"'{path}' needs its own Python code to load (auto_map in its config);"
            " pass --trust-remote-code only if you trust this folder"
        )
    return f"cannot load the {what} model in '{path}': {_one_line(e)}"


class HFCTCModel(CTCModel):
    kind = "hf-ctc"

    def __init__(self, path: Path, device: str, trust_remote_code: bool) -> None:
        from transformers import AutoConfig, AutoModelForCTC, AutoProcessor

        self.path = path
        self.device = device
        try:
            # the config first: a folder that needs its own code is refused before anything
            # else is read (the processor would warn about its unknown model type first)
            AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.feature_extractor = processor.feature_extractor
            self.tokenizer = processor.tokenizer
            self.model = AutoModelForCTC.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DanluError(_load_error("CTC", path, e, trust_remote_code)) from None
        self.model.to(device).eval()
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.align_to = int(getattr(self.model.config, "inputs_to_logits_ratio", 320))
        self.input_name = self.model.main_input_name
        vocab = self.tokenizer.get_vocab()
        labels = [""] * len(vocab)
        for tok, i in vocab.items():
            if i < len(labels):
                labels[i] = tok
        pad = self.tokenizer.pad_token
        delim = getattr(self.tokenizer, "word_delimiter_token", "|")
        self.labels = ["" if t == pad else " " if t == delim else t for t in labels]
        n_out = int(getattr(self.model.config, "vocab_size", len(labels)))
        self.labels += [f"<{i}>" for i in range(len(self.labels), n_out)]

    def forward(self, batch: list[np.ndarray]) -> list[Any]:
        import torch

        feats = self.feature_extractor(
            batch, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True
        )
        inputs = {
            self.input_name: feats[self.input_name].to(self.device),
            "attention_mask": feats["attention_mask"].to(self.device)
            if "attention_mask" in feats
            else torch.ones(len(batch), len(batch[0]), dtype=torch.long, device=self.device),
        }
        logits = self.model(**inputs).logits
        return list(logits)

    def decode_greedy(self, ids: np.ndarray, want_words: bool) -> tuple[str, list[Word]]:
        # transformers' pipeline decodes CTC ids with skip_special_tokens=False; so do we
        if not want_words:
            return str(self.tokenizer.decode(ids, skip_special_tokens=False)), []
        out = self.tokenizer.decode(ids, skip_special_tokens=False, output_word_offsets=True)
        fs = self.align_to / self.sample_rate
        words = [
            Word(_t(o["start_offset"] * fs), _t(o["end_offset"] * fs), o["word"]) for o in out["word_offsets"]
        ]
        return str(out["text"]), words


class RunCTCModel(CTCModel):
    """A danlu `task: speech_recognition` run folder, through its predictor (danlu.speech_run.Recognizer).

    The predictor turns one chunk of samples into frame log-probabilities (blank at 0, then the
    run's character vocabulary); chunking, stitching and decoding are the shared CTC code's."""

    kind = "danlu-ctc"

    def __init__(self, path: Path, device: str, trust_code: bool = False) -> None:
        self.path = path
        try:
            meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        schema = meta.get("schema", {}) if isinstance(meta, dict) else {}
        task = meta.get("task") if isinstance(meta, dict) else None
        task_type = task.get("type") if isinstance(task, dict) else task
        if task_type != "speech_recognition" or schema.get("input_kind") != "audio":
            raise DanluError(
                f"this run folder is not a speech model: '{path}' was trained for task "
                f"'{task_type or '?'}'; transcribe takes a speech_recognition run or a speech model folder"
            )
        from danlu.predict import load

        self.predictor = load(path, trust_code)
        if not hasattr(self.predictor, "transcribe"):
            raise DanluError(f"this run folder is not a speech model: '{path}' has no speech recognizer")
        self.sample_rate = int(self.predictor.sample_rate)
        self.labels = ["", *self.predictor.task.vocab]  # blank first, " " separates words
        self._decoders: dict[int, Any] = {}  # --beam-size -> CTCDecoder (see own_decoder)
        probe = self.predictor.log_probs(np.zeros(10 * self.sample_rate, np.float32), self.sample_rate)
        self.align_to = max(1, int(round(10 * self.sample_rate / max(len(probe), 1))))

    def forward(self, batch: list[np.ndarray]) -> list[Any]:
        return [self.predictor.log_probs(x, self.sample_rate) for x in batch]

    def own_decoder(self, opts: Options) -> Any:
        """The run's task.decoder (a lexicon keeps its words), its beam set by --beam-size; KenLM
        or hotwords go through pyctcdecode instead."""
        from danlu.ctc_decode import CTCDecoder

        d = self.predictor.task.decoder
        if opts.kenlm or opts.hotwords:
            return None
        if opts.beam_size is not None:
            if opts.beam_size not in self._decoders:  # built once per beam size: the lexicon trie
                kind = "beam" if opts.beam_size > 1 or d.trie is not None else "greedy"
                words = d.words if d.trie is not None else None
                self._decoders[opts.beam_size] = CTCDecoder(d.vocab, kind, opts.beam_size, words)
            d = self._decoders[opts.beam_size]
        return None if d.kind == "greedy" else d

    def frames(self, n_samples: int, logits: Any) -> int:
        return int(logits.shape[0])  # the run's front end rounds its own way

    def decode_greedy(self, ids: np.ndarray, want_words: bool) -> tuple[str, list[Word]]:
        from danlu.models.ctc import word_times  # the best-path word times the run's recognizer gives

        fs = self.align_to / self.sample_rate
        words = [Word(_t(a), _t(b), w) for w, a, b in word_times(ids.tolist(), self.labels[1:], fs)]
        return " ".join(w.text for w in words), words


# -- Whisper


def _whisper_blocks(
    chunks: Callable[[float, float], Iterator[AudioChunk]], opts: Options
) -> Iterator[tuple[AudioChunk, float, float]]:
    """Blocks of audio with the time span each is responsible for: [keep_from, keep_to)."""
    block = opts.chunk_length or WHISPER_BLOCK_SECONDS
    overlap = min(WHISPER_BLOCK_OVERLAP, block / 4)
    for c in chunks(block, overlap):
        keep_from = 0.0 if c.start_sample == 0 else c.start + overlap / 2
        keep_to = math.inf if c.is_last else c.start + block - overlap / 2
        yield c, keep_from, keep_to


def _cut(segments: list[Segment], keep_from: float, keep_to: float) -> list[Segment]:
    """The part of a block's segments that falls in its span (by word start where words exist)."""
    out = []
    for s in segments:
        if s.words:
            words = [w for w in s.words if keep_from <= w.start < keep_to]
            if not words:
                continue
            if len(words) != len(s.words):
                s = Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), words)
            out.append(s)
        elif keep_from <= s.start < keep_to:
            out.append(s)
    return out


class FasterWhisperModel(SpeechModel):
    kind = "ct2-whisper"

    def __init__(self, path: Path, device: str) -> None:
        import logging

        import ctranslate2
        from faster_whisper import WhisperModel

        ctranslate2.set_log_level(logging.ERROR)  # not the float16 -> float32 note on CPU
        self.path = path
        try:
            self.model = WhisperModel(str(path), device="cuda" if device.startswith("cuda") else "cpu")
        except (RuntimeError, ValueError, OSError) as e:
            raise DanluError(
                f"cannot load the CTranslate2 Whisper model in '{path}': {_one_line(e)}"
            ) from None
        self.sample_rate = int(self.model.feature_extractor.sampling_rate)

    def describe_decoder(self, opts: Options) -> str:
        return f"faster-whisper beam search, beam {opts.beam_size or 5}"

    def transcribe_chunks(self, chunks, duration, opts, progress):  # type: ignore[no-untyped-def]
        segments: list[Segment] = []
        language = opts.language
        for block, keep_from, keep_to in _whisper_blocks(chunks, opts):
            single = block.start_sample == 0 and block.is_last
            # word times let blocks be joined word by word; one block needs them only when asked
            words = opts.timestamps == "word" or not single
            try:
                pieces, info = self.model.transcribe(
                    block.samples,
                    language=language,
                    beam_size=opts.beam_size or 5,
                    word_timestamps=words,
                )
            except ValueError as e:  # e.g. an unknown language code
                raise DanluError(f"faster-whisper: {_one_line(e)}") from None
            language = language or info.language  # later blocks keep the first block's language
            block_segments = []
            done = 0.0
            for p in pieces:
                ws = [
                    Word(
                        _t(block.start + w.start),
                        _t(block.start + w.end),
                        w.word.strip(),
                        _t(w.probability, 4),
                    )
                    for w in (p.words or [])
                ]
                block_segments.append(
                    Segment(_t(block.start + p.start), _t(block.start + p.end), p.text.strip(), ws)
                )
                step = min(p.end, block.duration) - done
                if step > 0:
                    progress(step * _span(block, keep_from, keep_to))
                    done += step
            if done < block.duration:
                progress((block.duration - done) * _span(block, keep_from, keep_to))
            segments += _cut(block_segments, keep_from, keep_to)
        if opts.timestamps != "word":
            for s in segments:
                s.words = []
        text = " ".join(s.text for s in segments)
        return text, segments, language


def _t(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def _span(block: AudioChunk, keep_from: float, keep_to: float) -> float:
    """Fraction of a block's seconds that count as new progress (overlaps count once)."""
    new = min(keep_to, block.start + block.duration) - max(keep_from, block.start)
    return max(new, 0.0) / block.duration if block.duration else 0.0


class HFWhisperModel(SpeechModel):
    kind = "hf-whisper"

    def __init__(self, path: Path, device: str, trust_remote_code: bool) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.path = path
        self.device = device
        try:
            self.processor = WhisperProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = WhisperForConditionalGeneration.from_pretrained(
                path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DanluError(_load_error("Whisper", path, e, trust_remote_code)) from None
        self.model.to(device).eval()
        fe = self.processor.feature_extractor
        self.sample_rate = int(fe.sampling_rate)
        self.window = float(fe.chunk_length)  # 30 s: what one generate call sees

    def generate_ids(self, samples: np.ndarray, opts: Options, timestamps: bool) -> Any:
        """Token ids for up to one 30 s window, or transformers' long-form generation beyond it."""
        import torch

        long_form = len(samples) > self.window * self.sample_rate
        fe = self.processor.feature_extractor
        if long_form:
            feats = fe(
                samples,
                sampling_rate=self.sample_rate,
                return_tensors="pt",
                truncation=False,
                padding="longest",
                return_attention_mask=True,
            )
        else:
            feats = fe(samples, sampling_rate=self.sample_rate, return_tensors="pt")
        kwargs: dict[str, Any] = {}
        if opts.beam_size is not None:
            kwargs["num_beams"] = opts.beam_size
        if opts.language is not None:
            kwargs["language"] = opts.language
        if long_form:
            kwargs.update(
                attention_mask=feats["attention_mask"].to(self.device),
                return_timestamps=True,
                return_segments=True,
            )
        elif timestamps:
            kwargs.update(return_timestamps=True)
        with torch.inference_mode():
            try:
                return self.model.generate(feats["input_features"].to(self.device), **kwargs)
            except ValueError as e:
                raise DanluError(f"Whisper generation: {_one_line(e)}") from None

    def transcribe_chunks(self, chunks, duration, opts, progress):  # type: ignore[no-untyped-def]
        if opts.timestamps == "word":
            raise DanluError(
                f"--timestamps word is not available for transformers Whisper folders ('{self.path}'); use "
                "segment, or convert the model to CTranslate2 (ct2-transformers-converter) for faster-whisper"
            )
        tok = self.processor.tokenizer
        segments: list[Segment] = []
        for block, keep_from, keep_to in _whisper_blocks(chunks, opts):
            out = self.generate_ids(block.samples, opts, timestamps=False)
            if isinstance(out, dict) and "segments" in out:
                for seg in out["segments"][0]:
                    text = tok.decode(seg["tokens"], skip_special_tokens=True).strip()
                    if text:
                        s, e = float(seg["start"]), float(seg["end"])
                        segments += _cut(
                            [Segment(round(block.start + s, 3), round(block.start + e, 3), text)],
                            keep_from,
                            keep_to,
                        )
            else:
                ids = out.sequences if hasattr(out, "sequences") else out
                text = tok.decode(ids[0], skip_special_tokens=True).strip()
                if text:
                    segments.append(
                        Segment(round(block.start, 3), round(block.start + block.duration, 3), text)
                    )
            progress(block.duration * _span(block, keep_from, keep_to))
        return " ".join(s.text for s in segments), segments, opts.language


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------- transcribe


def _array_chunks(samples: np.ndarray, sample_rate: int) -> Callable[[float, float], Iterator[AudioChunk]]:
    """The same tiling as iter_audio_chunks, over samples already in memory."""

    def chunks(chunk_seconds: float, overlap_seconds: float) -> Iterator[AudioChunk]:
        chunk = int(round(chunk_seconds * sample_rate))
        step = chunk - int(round(overlap_seconds * sample_rate))
        n = len(samples)
        for start in range(0, max(n, 1), step):
            is_last = start + chunk >= n
            yield AudioChunk(samples[start : start + chunk], start, sample_rate, is_last)
            if is_last:
                return

    return chunks


def transcribe_one(
    model: SpeechModel,
    source: str | Path | bytes | np.ndarray,
    opts: Options,
    *,
    sample_rate: int | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> Transcript:
    """Transcribe one input: a file path (streamed), the bytes of a file, or samples + sample_rate."""
    from danlu.data.audio import audio_info, resample

    progress = progress or (lambda _s: None)
    t0 = time.perf_counter()
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise DanluError("a numpy array of samples needs sample_rate=...")
        samples = np.asarray(source, dtype=np.float32)
        if samples.ndim == 2:  # (samples, channels) or (channels, samples): average the short axis
            samples = samples.mean(axis=1 if samples.shape[1] < samples.shape[0] else 0)
        if samples.ndim != 1 or samples.size == 0:
            raise DanluError(
                f"audio array must be 1-D (or 2-D with channels) and non-empty, got shape {source.shape}"
            )
        samples = resample(samples, sample_rate, model.sample_rate)
        chunks = _array_chunks(samples, model.sample_rate)
        duration = len(samples) / model.sample_rate
        label = name or "<array>"
    elif isinstance(source, bytes):
        samples = load_audio(source, model.sample_rate)
        chunks = _array_chunks(samples, model.sample_rate)
        duration = len(samples) / model.sample_rate
        label = name or "<stdin>"
    else:
        info = audio_info(source)
        duration = info.duration

        def chunks(chunk_seconds: float, overlap_seconds: float) -> Iterator[AudioChunk]:
            return iter_audio_chunks(source, model.sample_rate, chunk_seconds, overlap_seconds)

        label = name or str(source)
    text, segments, language = model.transcribe_chunks(chunks, duration, opts, progress)
    return Transcript(
        text=text.strip(),
        segments=segments,
        duration=round(duration, 3),
        source=label,
        language=language,
        elapsed=time.perf_counter() - t0,
    )


def transcribe(
    model_ref: str | Path | SpeechModel,
    audio: str | Path | np.ndarray | bytes | list[str | Path],
    *,
    sample_rate: int | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    **options: Any,
) -> Transcript | list[Transcript]:
    """Transcribe audio with a speech model.

        t = danlu.transcribe("path/to/whisper-tiny.en", "talk.wav", timestamps="word")
        t.text, t.segments[0].start, t.segments[0].words

    audio: a file path, a list of paths (-> a list of Transcripts), the bytes of a file, or a numpy
    array with sample_rate=. options: language, beam_size, timestamps ("word" | "segment" | "none"),
    chunk_length, batch_size, kenlm, hotwords, hotword_weight."""
    opts = make_options(**options)
    model = (
        model_ref
        if isinstance(model_ref, SpeechModel)
        else load_cached(model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code)
    )
    if isinstance(audio, list | tuple):
        return [transcribe_one(model, a, opts) for a in audio]
    return transcribe_one(model, audio, opts, sample_rate=sample_rate)


# ---------------------------------------------------------------------------- the command


def limit_heap_growth() -> None:
    """Keep the memory of a long transcription flat (glibc only; `danlu transcribe` calls this, the
    Python API leaves the process's allocator alone).

    After a large buffer is freed glibc raises its mmap threshold (up to 32 MB), so later model
    activations come from the heap, which fragments: over a 30-minute file the resident size crept
    from 600 to 700 MB and kept growing. A fixed 1 MB threshold keeps large buffers in mmap,
    returned to the system when freed (peak 576 MB at 5 and at 30 minutes)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also stops the dynamic raise
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to do
        pass


@dataclass
class Job:
    source: Path | bytes
    label: str  # shown and used in failure messages
    out_name: str  # relative output path without extension


def expand_inputs(audio: list[str]) -> list[Job]:
    """Files, folders (recursively) and '-' (the bytes on stdin) as jobs; a missing path fails early."""
    import sys

    from danlu.data.audio import find_audio

    if not audio:
        raise DanluError("no audio given; pass files, folders or '-' for stdin")
    jobs: list[Job] = []
    for a in audio:
        if a == "-":
            if sys.stdin.isatty():
                raise DanluError("'-' reads audio from stdin, but stdin is a terminal; pipe a file in")
            data = sys.stdin.buffer.read()
            jobs.append(Job(data, "<stdin>", "stdin"))
            continue
        p = Path(a)
        if p.is_dir():
            for f in find_audio([p]):
                jobs.append(Job(f, str(f), str(f.relative_to(p).with_suffix(""))))
        else:
            for f in find_audio([p]):
                jobs.append(Job(f, str(f), f.stem))
    seen: dict[str, int] = {}
    for j in jobs:  # two inputs named alike must not overwrite each other's output
        n = seen.get(j.out_name, 0)
        seen[j.out_name] = n + 1
        if n:
            j.out_name = f"{j.out_name}-{n + 1}"
    return jobs


def run_command(
    model_ref: str,
    audio: list[str],
    *,
    output_format: str = "txt",
    output_dir: Path | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    **options: Any,
) -> int:
    """`danlu transcribe`: returns the number of inputs that failed (each already reported)."""
    from danlu import fileio
    from danlu.data.audio import audio_info

    if output_format not in OUTPUT_FORMATS:
        raise choose_from(output_format, OUTPUT_FORMATS, "--output-format")
    opts = make_options(**options)
    jobs = expand_inputs(audio)
    limit_heap_growth()
    failures: list[str] = []
    durations: dict[int, float] = {}
    for i, j in enumerate(jobs):  # headers first: unreadable files are reported before the model loads
        if isinstance(j.source, Path):
            try:
                durations[i] = audio_info(j.source).duration
            except DanluError as e:
                failures.append(str(e))
                warn(f"error: {e}")
    if len(failures) == len(jobs):
        warn(f"error: all {len(jobs)} inputs failed")
        return len(failures)
    model = load_cached(model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code)
    if opts.language is not None and isinstance(model, CTCModel):
        raise DanluError(f"--language is for Whisper models; '{model.path}' is a CTC model of one language")
    with progress_bar(quiet, len(jobs), sum(durations.values())) as (advance_file, advance_audio):
        for i, j in enumerate(jobs):
            if isinstance(j.source, Path) and i not in durations:
                advance_file()
                continue
            try:
                t = transcribe_one(model, j.source, opts, progress=advance_audio, name=j.label)
            except DanluError as e:
                failures.append(str(e))
                warn(f"error: {e}")
                advance_file()
                continue
            words = opts.timestamps == "word"
            if output_dir is not None:
                fileio.write_text(
                    Path(output_dir) / f"{j.out_name}.{output_format}", t.render(output_format, words)
                )
            elif output_format == "json" and len(jobs) > 1:
                echo(json.dumps(t.to_dict(words), ensure_ascii=False))
            elif len(jobs) > 1:
                echo(f"==> {j.label} <==\n{t.render(output_format, words).rstrip()}\n")
            else:
                echo(t.render(output_format, words).rstrip("\n"))
            advance_file()
    if failures:
        warn(f"error: {len(failures)} of {len(jobs)} inputs failed; the others were transcribed")
    elif output_dir is not None and not quiet:
        warn(f"wrote {len(jobs)} {output_format} file(s) to {output_dir}")
    return len(failures)


class progress_bar:
    """A rich bar over files and audio seconds; nothing when quiet or not on a terminal."""

    def __init__(self, quiet: bool, files: int, seconds: float) -> None:
        import sys

        self.on = not quiet and sys.stderr.isatty()
        self.files, self.seconds = files, seconds

    def __enter__(self) -> tuple[Callable[[], None], Progress]:
        if not self.on:
            return (lambda: None), (lambda _s: None)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.__enter__()
        f = self.bar.add_task("files", total=self.files)
        a = self.bar.add_task("audio seconds", total=max(int(self.seconds), 1))
        return (lambda: self.bar.advance(f)), (lambda s: self.bar.advance(a, s))

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.bar.__exit__(None, None, None)
