"""Speech: everything danlu does with audio, as one package above the core (like tuning/).

audio.py (reading, resampling, chunking), normalize.py (the one text normaliser), decode.py (the
one decoder interface), data.py (manifests, features, batches), model.py (danlu's CTC and clip
networks), task.py (CTC loss, the run's decoder), recognizer.py (the one recognizer: run folders
and Hugging Face / Whisper models -> log-probabilities -> text), transcribe.py (`danlu
transcribe`, `danlu.transcribe`), evaluation.py (WER/CER after the normaliser, a run's
evaluation and report, `evaluate --manifest`). See ARCHITECTURE.md, "The speech package".

The core reaches this package only through "danlu.speech.module:name" strings (the registry's
model and loss entries, the audio data and task builders), imported on first use.
"""
