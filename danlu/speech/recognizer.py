"""The one recognizer: a speech model -> frame log-probabilities -> text with word times, for
`danlu transcribe`, `danlu predict` and `danlu evaluate` alike.

`Recognizer` is a danlu speech run folder (what `danlu.load` returns for audio runs);
`HFCTCModel`, `HFWhisperModel` and `FasterWhisperModel` are the other kinds of model. All are
`SpeechModel`s: `transcribe_chunks` over streamed audio (the command, danlu/speech/transcribe.py);
the CTC ones share `CTCRecognizer` (chunking, stitching, and decoding through one decoder
interface, danlu/speech/decode.py).

A speech model reference (see `resolve_speech`) is one of
  - a Hugging Face CTC folder (Wav2Vec2, HuBERT, WavLM ...): AutoModelForCTC + AutoProcessor, kind "hf-ctc";
  - a Hugging Face Whisper folder: WhisperForConditionalGeneration + WhisperProcessor, kind "hf-whisper";
  - a CTranslate2 Whisper folder (model.bin + config.json, no PyTorch weights): faster-whisper,
    kind "ct2-whisper";
  - a danlu run folder of a `task: speech_recognition` run: `Recognizer`, kind "danlu-ctc";
  - a hub id when online (found through danlu.hub, where `danlu generate` resolves too).

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
import functools
import itertools
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DanluError, choose_from, one_line
from danlu.hub import WEIGHT_FILES, locate_model
from danlu.speech.audio import AudioChunk, array_chunks
from danlu.speech.decode import Decoder, DecoderOptions, make_decoder

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
        if self.batch_size is not None and self.batch_size < 1:
            raise DanluError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.chunk_length is not None and self.chunk_length <= 0:
            raise DanluError(f"--chunk-length must be positive seconds, got {self.chunk_length}")
        # the decoding options: the one validation of danlu/speech/decode.py (kenlm when it is used)
        beam = 1 if self.beam_size is None else self.beam_size
        DecoderOptions(beam_size=beam, hotword_weight=self.hotword_weight).check()
        return self

    def decoder_options(self) -> DecoderOptions:
        """What a CTC model without a decoder of its own does: pyctcdecode for a beam wider than 1,
        a KenLM model or hotwords, else the best path."""
        if (self.beam_size or 1) > 1 or self.kenlm or self.hotwords:
            return DecoderOptions(
                "pyctcdecode", self.beam_size or 1, None, self.kenlm, self.hotwords, self.hotword_weight
            )
        return DecoderOptions("greedy")


def speech_options(**options: Any) -> Options:
    names = set(Options.__dataclass_fields__)
    unknown = sorted(set(options) - names)
    if unknown:
        raise choose_from(unknown[0], names, "transcribe option")
    if isinstance(options.get("hotwords"), str):
        options["hotwords"] = [options["hotwords"]]
    return Options(**options).check()


# ---------------------------------------------------------------------------- model resolution

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
    has_torch = any((path / f).is_file() for f in WEIGHT_FILES) or any(path.glob("*.safetensors"))
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
    ref: str | Path,
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    dtype: str | None = None,
) -> SpeechModel:
    """Load the speech model `ref` names (see the module docstring). trust_remote_code: a
    Hugging Face folder may run its own Python code; trust_code: a danlu run folder may name
    user code in its model.json. Both only for folders you trust. dtype: "float32" (default)
    or "int8", the CTC models' dynamically quantized tier (danlu/speech/quantize.py)."""
    from danlu.speech.quantize import check_dtype, quantize_linear

    path = locate_model(ref)
    if not path.is_dir():
        raise DanluError(f"'{path}' is a file; give the model's folder")
    kind = speech_kind(path)
    check_dtype(dtype, kind, device)
    check_files(path, kind)  # before torch is imported: a broken folder fails fast
    if dtype == "int8":
        ctc: HFCTCModel | Recognizer
        if kind == "hf-ctc":
            ctc = HFCTCModel(path, "cpu", trust_remote_code)
        else:
            ctc = Recognizer(path, trust_code, speech_only=True)
        ctc.model = quantize_linear(ctc.model)
        return ctc
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "hf-ctc":
        return HFCTCModel(path, device, trust_remote_code)
    if kind == "hf-whisper":
        return HFWhisperModel(path, device, trust_remote_code)
    if kind == "ct2-whisper":
        return FasterWhisperModel(path, device)
    return Recognizer(path, trust_code, speech_only=True)


_CACHE: dict[tuple[Any, ...], SpeechModel] = {}


def load_speech(
    ref: str | Path,
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    dtype: str | None = None,
) -> SpeechModel:
    p = Path(str(ref)).expanduser()
    key = (str(p.resolve()) if p.exists() else str(ref), device, trust_remote_code, trust_code, dtype)
    if key not in _CACHE:
        _CACHE[key] = resolve_speech(
            ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code, dtype=dtype
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


class CTCRecognizer(SpeechModel):
    """Shared CTC inference: chunked log-probabilities, frame stitching, one decoder."""

    align_to: int = 320  # samples per output frame
    labels: list[str]  # index -> symbol ("" blank, " " word separator)

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

    def frame_seconds(self, n_frames: int, duration: float) -> float:
        """Seconds between output frames (word times are frame numbers times this)."""
        return self.align_to / self.sample_rate

    def forward(self, batch: list[np.ndarray]) -> list[Any]:
        """Per-chunk logits (frames, vocab) as torch tensors; chunks in a batch have equal lengths."""
        raise NotImplementedError

    def decoder(self, opts: Options) -> Decoder:
        """The decoder `opts` select (danlu/speech/decode.py)."""
        return make_decoder(self.labels, opts.decoder_options())

    def describe_decoder(self, opts: Options) -> str:
        return self.decoder(opts).describe()

    def batching(self, opts: Options) -> tuple[int, int]:
        """(chunks per forward pass, passes at once): on CPU several single-threaded passes side by
        side, elsewhere one pass of a larger batch."""
        if str(getattr(self, "device", "cpu")) == "cpu":
            return opts.batch_size or 1, CTC_PARALLEL
        return opts.batch_size or CTC_BATCH, 1

    def frame_outputs(
        self,
        chunks: Callable[[float, float], Iterator[AudioChunk]],
        opts: Options,
        progress: Progress,
        log_probs: bool = True,
    ) -> np.ndarray | None:
        """The stitched (frames, vocab) log-probabilities of the streamed audio, or with
        log_probs=False only their per-frame argmax (all the best path needs); None: no audio."""
        import torch

        chunk, stride = self.chunk_lengths(opts.chunk_length)
        kept: list[Any] = []  # per chunk, the overlap dropped

        def run(items: Batch) -> list[np.ndarray]:
            with torch.inference_mode():
                logits = self.forward([x for x, _, _ in items])
                out = []
                for (x, left, right), lg in zip(items, logits, strict=True):
                    token_n = self.frames(len(x), lg)
                    lf = int(round(left / len(x) * token_n))
                    rf = int(round(right / len(x) * token_n))
                    lg = lg[lf : token_n - rf].float()
                    out.append(torch.log_softmax(lg, -1) if log_probs else lg.argmax(-1))
            return [o.cpu().numpy() for o in out]

        size, workers = self.batching(opts)
        batches = _chunk_batches(chunks, chunk, stride, size, self.sample_rate)
        # closing: an error here (or Ctrl-C) stops the workers and restores torch's threads now
        with contextlib.closing(_map_batches(run, batches, workers)) as results:
            for items, out in results:
                kept += out
                progress(sum(len(x) - left - right for x, left, right in items) / self.sample_rate)
        return np.concatenate(kept, 0) if kept else None

    def hypothesis(
        self, decoder: Decoder, out: np.ndarray, duration: float, words: bool = True
    ) -> tuple[str, list[Word]]:
        """Text and timed words of stitched frame outputs (words=False: they may be left out)."""
        text, frames = decoder.hypothesis(out)
        fs = self.frame_seconds(len(out), duration)
        return text, [Word(_t(a * fs), _t(b * fs), w) for w, a, b in frames]

    def transcribe_chunks(self, chunks, duration, opts, progress):  # type: ignore[no-untyped-def]
        decoder = self.decoder(opts)
        out = self.frame_outputs(chunks, opts, progress, log_probs=decoder.kind != "greedy")
        if out is None:
            return "", [], None
        text, timed = self.hypothesis(decoder, out, duration, opts.timestamps != "none")
        return text, _segments_from_words(text, timed, duration, opts.timestamps), None


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
    return f"cannot load the {what} model in '{path}': {one_line(e)}"


class HFCTCModel(CTCRecognizer):
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

    def hypothesis(
        self, decoder: Decoder, out: np.ndarray, duration: float, words: bool = True
    ) -> tuple[str, list[Word]]:
        if decoder.kind != "greedy":
            return super().hypothesis(decoder, out, duration, words)
        # the best path through the model's tokenizer, as transformers' pipeline decodes CTC ids
        # (skip_special_tokens=False, word offsets): its tokens may be longer than a character
        ids = out if out.ndim == 1 else out.argmax(-1)
        if not words:
            return str(self.tokenizer.decode(ids, skip_special_tokens=False)), []
        out = self.tokenizer.decode(ids, skip_special_tokens=False, output_word_offsets=True)
        fs = self.align_to / self.sample_rate
        words = [
            Word(_t(o["start_offset"] * fs), _t(o["end_offset"] * fs), o["word"]) for o in out["word_offsets"]
        ]
        return str(out["text"]), words


@dataclass
class Transcription:
    """One utterance through a run's Recognizer: text, frame log-probabilities, word times."""

    text: str
    log_probs: np.ndarray  # (frames, vocab + 1), blank at 0
    frame_seconds: float  # time between output frames
    words: list[tuple[str, float, float]]  # (word, start s, end s)


class Recognizer(CTCRecognizer):
    """A trained danlu speech run folder: `transcribe` (speech_recognition runs: frame
    log-probabilities of chunked audio, decoded by the run's task.decoder unless options say
    otherwise) or `classify` (audio classes); `predict_frame` over files, folders or a manifest.
    `danlu predict`, `danlu evaluate` and `danlu transcribe` of a run all use this class."""

    kind = "danlu-ctc"

    def __init__(self, run_dir: str | Path, trust_code: bool = False, speech_only: bool = False) -> None:
        import torch

        from danlu import models, tasks
        from danlu.config import TaskConfig, parse_model
        from danlu.registry import reading_saved
        from danlu.run import RunDir
        from danlu.speech.data import SpeechPreprocessor, SpeechSchema
        from danlu.training.checkpoint import load_weights

        if speech_only:  # transcribe: only a speech_recognition run turns audio into text
            try:
                meta = json.loads((Path(run_dir) / "model.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            schema = meta.get("schema", {}) if isinstance(meta, dict) else {}
            task = meta.get("task") if isinstance(meta, dict) else None
            task_type = task.get("type") if isinstance(task, dict) else task
            if task_type != "speech_recognition" or schema.get("input_kind") != "audio":
                raise DanluError(
                    f"this run folder is not a speech model: '{run_dir}' was trained for task "
                    f"'{task_type or '?'}'; transcribe takes a speech_recognition run or a speech"
                    " model folder"
                )
        run = RunDir.open(run_dir)
        meta = run.read_model_json()
        if meta.get("schema", {}).get("input_kind") != "audio":
            raise DanluError(f"{run.path}: not a speech run (its inputs are not audio)")
        self.run = run
        self.path = run.path
        self.device = "cpu"
        self.schema = SpeechSchema.from_dict(meta["schema"])
        self.preprocessor = SpeechPreprocessor.from_state(meta["preprocessor"])
        self.featurizer = self.preprocessor.featurizer
        model_cfg = parse_model(meta["model"])
        if model_cfg.type == "wav2vec2_ctc":  # the run's own export, not the original checkpoint
            model_cfg = model_cfg.model_copy(update={"path": str(run.path / "hf")})
        with reading_saved(run.model_json, trust_code):  # user code only from a trusted folder
            self.task = tasks.build(
                TaskConfig.model_validate(meta["task"]), self.schema, torch.zeros(0, dtype=torch.long)
            )
            self.model = models.build(model_cfg, self.schema, self.task.out_dim)
        load_weights(self.model, run.weights)
        self.model.eval()
        self.sample_rate = int(self.schema.sample_rate)
        self._decoders: dict[tuple[Any, ...], Decoder] = {}  # options -> decoder (a lexicon's trie once)
        if self.schema.task == "speech_recognition":
            self.labels = ["", *self.task.vocab]  # blank first, " " separates words

    @functools.cached_property
    def align_to(self) -> int:  # type: ignore[override]
        """Samples per output frame, measured on 10 s of silence (when chunking first needs it)."""
        probe = self.log_probs(np.zeros(10 * self.sample_rate, np.float32), self.sample_rate)
        return max(1, int(round(10 * self.sample_rate / max(len(probe), 1))))

    # -- the model
    def _forward(self, waveform: np.ndarray, sample_rate: int) -> Any:
        import torch

        from danlu.speech.audio import resample

        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim > 1:
            wave = wave.mean(axis=-1)
        if sample_rate != self.sample_rate:
            wave = resample(wave, sample_rate, self.sample_rate)
        x = self.featurizer(torch.from_numpy(np.ascontiguousarray(wave)))
        with torch.no_grad():
            return self.model(x[None], torch.tensor([len(x)]))

    def log_probs(self, waveform: np.ndarray, sample_rate: int) -> Any:
        """(frames, vocab + 1) CTC log-probabilities of one piece of audio, blank at 0."""
        log_probs, lengths = self._forward(waveform, sample_rate)
        return log_probs[0, : int(lengths[0])].float()

    def forward(self, batch: list[np.ndarray]) -> list[Any]:
        return [self.log_probs(x, self.sample_rate) for x in batch]

    def frames(self, n_samples: int, logits: Any) -> int:
        return int(logits.shape[0])  # the run's front end rounds its own way

    def frame_seconds(self, n_frames: int, duration: float) -> float:
        # the run's front end rounds its own way: the audio's duration over its frames
        return duration / max(n_frames, 1) if duration else self.align_to / self.sample_rate

    # -- decoding
    def decoder(self, opts: Options) -> Decoder:
        """The run's task.decoder (a lexicon keeps its words), its beam set by --beam-size; KenLM
        or hotwords go through pyctcdecode instead."""
        run = self.task.decoder
        if opts.kenlm or opts.hotwords:
            o = opts.decoder_options()
        elif opts.beam_size is not None:
            lexicon = getattr(run, "trie", None) is not None
            kind = "beam" if opts.beam_size > 1 or lexicon else "greedy"
            o = DecoderOptions(kind, opts.beam_size, list(run.words) if lexicon else None)
        else:
            return run  # type: ignore[no-any-return]
        key = (o.type, o.beam_size, o.kenlm, tuple(o.hotwords or ()), o.hotword_weight)
        if key not in self._decoders:
            self._decoders[key] = make_decoder(self.labels, o)
        return self._decoders[key]

    def transcribe(self, waveform: np.ndarray, sample_rate: int, **options: Any) -> Transcription:
        """Text, frame log-probabilities and word times of float mono samples at `sample_rate`
        (resampled as needed): the same chunking and decoding `danlu transcribe` does."""
        from danlu.speech.audio import resample

        if self.schema.task != "speech_recognition":
            raise DanluError(f"{self.run.path}: this run classifies audio; use classify()")
        opts = speech_options(**options)
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim > 1:
            wave = wave.mean(axis=-1)
        wave = resample(wave, sample_rate, self.sample_rate) if sample_rate != self.sample_rate else wave
        duration = len(wave) / self.sample_rate
        lp = self.frame_outputs(array_chunks(wave, self.sample_rate), opts, lambda _s: None)
        if lp is None:
            lp = np.zeros((0, len(self.labels)), np.float32)
        text, words = self.hypothesis(self.decoder(opts), lp, duration)
        return Transcription(
            text, lp, self.frame_seconds(len(lp), duration), [(w.text, w.start, w.end) for w in words]
        )

    # -- audio classification runs
    def classify(self, waveform: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Class probabilities of one clip."""
        logits = self._forward(waveform, sample_rate)
        proba = self.task.decode(logits.float())[0]
        return {name: float(p) for name, p in zip(self.schema.class_names, proba, strict=True)}

    # -- files
    def predict(self, paths: Any) -> list[str]:
        """Transcripts (or class names) of audio files, folders or a manifest's files."""
        return self.predict_frame(paths)["prediction"].tolist()  # type: ignore[no-any-return]

    def predict_frame(self, paths: Any, proba: bool = False) -> Any:
        """Audio files (or folders, or a manifest with an `audio` column) -> a table of
        predictions: the transcript, or the class (+ probabilities)."""
        import pandas as pd

        from danlu.speech.audio import find_audio, load_audio

        rows = []
        for f in find_audio(_input_files(paths)):
            wave = load_audio(f, self.sample_rate)
            if self.schema.task == "speech_recognition":
                rows.append({"audio": str(f), "prediction": self.transcribe(wave, self.sample_rate).text})
            else:
                p = self.classify(wave, self.sample_rate)
                row: dict[str, Any] = {"audio": str(f), "prediction": max(p, key=p.get)}  # type: ignore[arg-type]
                if proba:
                    row.update({f"proba_{k}": v for k, v in p.items()})
                rows.append(row)
        return pd.DataFrame(rows)


def _input_files(paths: Any) -> list[Path]:
    """A manifest (CSV/TSV/JSONL with an `audio` column) expands to its files."""
    from danlu.data.tabular import FORMATS, read_table

    out: list[Path] = []
    for p in [paths] if isinstance(paths, str | Path) else list(paths):
        p = Path(p)
        if p.is_file() and p.suffix.lower() in FORMATS:
            df = read_table(p)
            if "audio" not in df.columns:
                raise DanluError(
                    f"{p}: a manifest needs an 'audio' column; columns are: {', '.join(df.columns)}"
                )
            out.extend(p.parent / str(a) for a in df["audio"])
        else:
            out.append(p)
    return out


def load_recognizer(run_dir: str | Path, trust_code: bool = False) -> Recognizer:
    """A trained speech run folder -> Recognizer (transcribe / classify / predict_frame);
    trust_code: let its model.json name user code."""
    return Recognizer(run_dir, trust_code)


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
                f"cannot load the CTranslate2 Whisper model in '{path}': {one_line(e)}"
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
                raise DanluError(f"faster-whisper: {one_line(e)}") from None
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
                raise DanluError(f"Whisper generation: {one_line(e)}") from None

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
