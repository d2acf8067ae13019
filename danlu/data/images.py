"""Images: reading (a folder of class sub-folders, a CSV of image paths, .npy/.npz arrays,
or scikit-learn's digits as 8x8 images), decoding with Pillow, splitting, the fitted
preprocessing saved with the model (size, channels, per-channel mean/std of the training
split), and batching.

Every split becomes uint8 (decoded files) or float (arrays, in [0, 1]) images of the
decoded size. A set that fits in `data.images.memory_mb` is decoded once and batched as
tensors; a larger one is decoded from disk by DataLoader workers. Either way a training
batch is augmented as a whole on the tensor side (danlu/data/transforms.py), in an order
and with random draws fixed by (seed, epoch, batch), so both paths give the same batches
and a resumed run continues exactly.

Labels: the class sub-folder's name; the CSV's `data.target` column; the .npz's y/labels
array; for an .npy of images, the file named by `data.images.labels` (.npy, or text with one
label per line).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.config import DataConfig, ImageDataConfig
from danlu.data import transforms as T
from danlu.data.batches import epoch_order
from danlu.data.tabular import Schema, TabularPreprocessor, TensorData, infer_task, read_table
from danlu.errors import DanluError, did_you_mean

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
IMAGE_KEYS = ("x", "X", "images", "image", "data", "inputs")
LABEL_KEYS = ("y", "Y", "labels", "label", "targets", "target")
OTHER_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".txt", ".jsonl", ".csv")
IMAGE_MODELS = ("cnn", "resnet")
EVAL_BATCH = 256  # decoded batches for evaluation; the size does not change the numbers


# --------------------------------------------------------------------------- recognizing
def is_image_data(cfg: DataConfig, model_cfg: Any = None) -> bool:
    """Image data: `source: digits_images`, a `data.images` section, a folder (of class
    sub-folders), or an .npy/.npz file for a cnn/resnet model."""
    if getattr(cfg, "text", None) is not None or getattr(cfg, "sequence", None) is not None:
        return False
    if getattr(cfg, "audio", None) is not None:
        return False
    if cfg.source == "digits_images" or cfg.images is not None:
        return True
    path = cfg.path or cfg.train
    if path and Path(path).is_dir():
        return _looks_like_images(Path(path))
    model_type = getattr(model_cfg, "type", "")
    return bool(path) and Path(path).suffix.lower() in (".npy", ".npz") and model_type in IMAGE_MODELS


def _looks_like_images(root: Path, limit: int = 2000) -> bool:
    """A folder is image data unless its first files are audio or text (other readers)."""
    for i, p in enumerate(root.rglob("*")):
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return True
        if suffix in OTHER_SUFFIXES or i >= limit:
            return False
    return True  # no files at all: reported as an image folder without images


# --------------------------------------------------------------------------- reading
def read_folder(root: Path) -> pd.DataFrame:
    """root/<class>/**/*.png -> frame of (image path, label)."""
    if not root.is_dir():
        raise DanluError(f"{root}: image folder not found")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    rows = []
    for c in classes:
        files = sorted(
            p
            for p in c.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        rows += [(str(p), c.name) for p in files]
    if not rows:
        if loose:
            raise DanluError(
                f"{root}: images lie directly in the folder; put them in one sub-folder per class"
                f" (e.g. {root}/cat/{loose[0].name})"
            )
        raise DanluError(
            f"{root}: no images found; expected one sub-folder per class holding"
            f" {', '.join(IMAGE_SUFFIXES[:5])}, ... files (e.g. {root}/cat/001.png)"
        )
    labels = sorted({label for _, label in rows})
    if len(labels) < 2:
        raise DanluError(
            f"{root}: only one class folder with images ('{labels[0]}'); image classification"
            " needs at least two class sub-folders"
        )
    return pd.DataFrame(rows, columns=["image", "label"])


def read_csv(path: Path, column: str, keep_paths: bool = False) -> pd.DataFrame:
    """A table with an image-path column; paths are relative to the table's folder. With
    keep_paths the column stays as written (for output) and the folder is remembered in
    df.attrs["image_base"]."""
    df = read_table(path)
    if column not in df.columns:
        raise DanluError(
            f"{path}: image column '{column}' not found{did_you_mean(column, df.columns)};"
            f" columns are: {', '.join(df.columns)}; set data.images.column"
        )
    resolved = resolve_paths(df[column], path.parent, path)
    if keep_paths:
        df.attrs["image_base"] = str(path.parent)
    else:
        df[column] = resolved
    return df


def resolve_paths(col: pd.Series, base: Path, where: Path) -> list[str]:
    out = []
    for i, v in zip(col.index, col, strict=True):
        if not isinstance(v, str) or not v.strip():
            raise DanluError(f"{where}: row {int(i) + 1} has no image path ({v!r})")
        p = Path(v)
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise DanluError(f"{where}: row {int(i) + 1}: image file '{v}' not found (looked for {p})")
        out.append(str(p))
    return out


def read_arrays(
    path: Path, cfg: DataConfig, images: ImageDataConfig, need_labels: bool = True
) -> tuple[np.ndarray, Any]:
    """.npz with image and label arrays, or .npy images + data.images.labels."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DanluError(f"{path}: cannot read as NumPy data: {str(e).splitlines()[0]}") from None
    if isinstance(loaded, np.ndarray):
        x = loaded
        if images.labels is None:
            raise DanluError(
                f"{path}: an .npy holds only the images; name the labels in data.images.labels"
                " (an .npy, or a text file with one label per line), or use an .npz with arrays x and y"
            )
        y = read_labels(Path(images.labels))
    else:
        keys = list(loaded.keys())
        x_key = _pick_key(keys, images.column, IMAGE_KEYS)
        y_key = _pick_key(keys, cfg.target if isinstance(cfg.target, str) else None, LABEL_KEYS)
        if x_key is not None and y_key is None and not need_labels:
            return loaded[x_key], None
        if x_key is None or y_key is None:
            what = "images" if x_key is None else "labels"
            raise DanluError(
                f"{path}: no {what} array; the file holds {', '.join(keys)}; name the images x (or"
                " images) and the labels y (or labels), or set data.images.column / data.target"
            )
        x, y = loaded[x_key], loaded[y_key]
    if len(x) != len(y):
        raise DanluError(f"{path}: {len(x)} images but {len(y)} labels")
    if y.ndim != 1:
        raise DanluError(f"{path}: labels must be one value per image, got shape {list(y.shape)}")
    return x, y


def _pick_key(keys: list[str], wanted: str | None, defaults: Sequence[str]) -> str | None:
    if wanted and wanted in keys:
        return wanted
    return next((k for k in defaults if k in keys), None)


def read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DanluError(f"data.images.labels: {path} not found")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    values = pd.to_numeric(pd.Series(lines), errors="coerce")
    return values.to_numpy() if values.notna().all() else np.asarray(lines, dtype=object)


def array_images(x: np.ndarray, where: str) -> np.ndarray:
    """N x H x W, N x H x W x C or N x C x H x W -> N x C x H x W (C = 1 or 3)."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DanluError(f"{where}: images must be a numeric array, got dtype {x.dtype}")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
            x = np.moveaxis(x, -1, 1)
        if x.shape[1] == 4:
            x = x[:, :3]  # drop alpha
        if x.shape[1] in (1, 3):
            return x
    raise DanluError(
        f"{where}: images array has shape {list(x.shape)}; expected N x H x W, N x H x W x C"
        " or N x C x H x W with 1 or 3 channels"
    )


def digits_frame() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return pd.DataFrame({"label": d.target}), d.images.astype(np.float32)  # 8x8, values 0..16


# --------------------------------------------------------------------------- decoding
def decode(path: str, channels: int) -> np.ndarray:
    """One image file -> uint8 array (C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = _gray_or_rgb(im, channels)
            arr = np.array(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise DanluError(
            f"{path}: cannot read image ({reason}); the file is corrupt or not an image"
        ) from None
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _gray_or_rgb(im: Any, channels: int) -> Any:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit and float images: scale to 8 bits
        from PIL import Image

        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = _white(im.size)
        background.paste(im, mask=im.getchannel("A"))  # transparent parts are white
        im = background
    return im.convert("L" if channels == 1 else "RGB")


def _white(size: tuple[int, int]) -> Any:
    from PIL import Image

    return Image.new("RGB", size, (255, 255, 255))


def probe(paths: Sequence[str]) -> tuple[tuple[int, int], int]:
    """From the headers of these images: the most common (H, W), and 1 if every image is
    grayscale else 3. A file that is not an image fails here, naming it."""
    from PIL import Image, UnidentifiedImageError

    sizes: Counter[tuple[int, int]] = Counter()
    gray = True
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes[(im.height, im.width)] += 1
                gray = gray and (im.mode in GRAY_MODES or _gray_palette(im))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
            raise DanluError(
                f"{p}: cannot read image ({reason}); the file is corrupt or not an image"
            ) from None
    return (sizes.most_common(1)[0][0] if sizes else (0, 0)), 1 if gray else 3


def _gray_palette(im: Any) -> bool:
    if im.mode != "P":
        return False
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(pal)) and bool((pal == pal[:, :1]).all())


def _size(v: int | Sequence[int] | None) -> list[int] | None:
    if v is None:
        return None
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


# --------------------------------------------------------------------------- preprocessing
@dataclass
class ImagePreprocessor:
    """Fitted on the training split; its state (kind "image") is saved in model.json."""

    column: str
    channels: int
    size: list[int]  # the model's input (H, W)
    resize: list[int]  # decoded images are resized to this, then cropped to `size`
    value_range: list[float]  # non-8-bit arrays: (low, high) of the training split -> [0, 1]
    mean: list[float]
    std: list[float]
    labels: TabularPreprocessor  # the target's encoding (classes, or scaling for regression)
    augment: dict[str, Any] = field(default_factory=dict)
    in_memory: Any = "auto"
    memory_mb: int = 2048
    workers: int = 2
    kind: str = "image"

    # ---- the target, as for tables
    task = property(lambda self: self.labels.task)
    targets = property(lambda self: self.labels.targets)
    classes = property(lambda self: self.labels.classes)
    target_center = property(lambda self: self.labels.target_center)
    target_scale = property(lambda self: self.labels.target_scale)

    def transform_target(self, df: pd.DataFrame, where: str = "data") -> torch.Tensor:
        return self.labels.transform_target(df, where)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        return self.labels.inverse_target(y)

    def schema(self) -> Schema:
        c, (h, w) = self.channels, self.size
        return Schema(
            task=self.task,
            features=[self.column],
            numeric=[],
            categorical=[],
            n_inputs=c * h * w,
            cat_cardinalities=[],
            targets=self.targets,
            classes=self.classes,
            input_kind="image",
            image_shape=[c, h, w],
        )

    def state(self) -> dict[str, Any]:
        s = dict(self.__dict__)
        s["labels"] = self.labels.state()
        return s

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Any = None) -> ImagePreprocessor:
        s = dict(state)
        s["labels"] = TabularPreprocessor.from_state(s["labels"])
        return cls(**s)

    # ---- images -> model inputs
    def load(self, items: Sequence[Any], where: str = "input") -> torch.Tensor:
        """Paths, PIL images or arrays (H x W, H x W x C, C x H x W) -> stored images
        (N, C, H, W) at the decoded size: uint8 for 8-bit data, else float in [0, 1]."""
        if self.workers and len(items) > 1024 and all(isinstance(p, str) for p in items):
            return self._load_files(list(items))
        out = [self._one(item, where) for item in items]
        dtypes = {t.dtype for t in out}
        if len(dtypes) > 1:
            out = [t.float() / 255 if t.dtype == torch.uint8 else t for t in out]
        return torch.stack(out) if out else torch.zeros(0, self.channels, *self.resize, dtype=torch.uint8)

    def _load_files(self, files: list[str]) -> torch.Tensor:
        """Many files: decoded by `workers` DataLoader processes, in order."""
        single = ImagePreprocessor(**{**self.__dict__, "workers": 0})
        chunks = [list(range(i, min(i + 256, len(files)))) for i in range(0, len(files), 256)]
        loader = torch.utils.data.DataLoader(
            _Files(single, files), batch_sampler=chunks, num_workers=self.workers, collate_fn=_collate
        )
        out = []
        for batch in loader:
            if isinstance(batch, str):
                raise DanluError(batch)
            out.append(batch)
        return torch.cat(out)

    def _one(self, item: Any, where: str) -> torch.Tensor:
        if isinstance(item, str | Path):
            if not Path(item).is_file():
                raise DanluError(f"{where}: image file '{item}' not found")
            arr = decode(str(item), self.channels)
        elif hasattr(item, "mode") and hasattr(item, "convert"):  # a PIL image
            arr = np.array(_gray_or_rgb(item, self.channels))
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        else:
            arr = np.asarray(item)
            if arr.ndim == 2:
                arr = arr[None]
            elif arr.ndim == 3 and arr.shape[0] not in (1, 3) and arr.shape[-1] in (1, 3, 4):
                arr = arr.transpose(2, 0, 1)
            if arr.ndim != 3 or arr.shape[0] not in (1, 3, 4):
                raise DanluError(
                    f"{where}: an image array has shape {list(np.shape(item))}; expected H x W,"
                    f" H x W x C or C x H x W (the model takes {self.channels} x {self.size[0]} x"
                    f" {self.size[1]})"
                )
            arr = arr[:3]
            if arr.dtype != np.uint8:
                arr = self._scaled(arr)
        return self._fit_channels_and_size(torch.from_numpy(np.ascontiguousarray(arr)))

    def _scaled(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == np.uint16:
            return (arr / 65535.0).astype(np.float32)
        lo, hi = self.value_range
        return ((arr.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)

    def _fit_channels_and_size(self, t: torch.Tensor) -> torch.Tensor:
        if t.shape[-3] != self.channels:
            f = t.float()
            f = f.expand(*f.shape[:-3], 3, *f.shape[-2:]) if self.channels == 3 else T.to_gray(f)
            t = f.round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else f
        if list(t.shape[-2:]) != self.resize:
            f = T.resize(t.float(), self.resize)
            t = f.round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else f
        return t

    def to_model(
        self, raw: torch.Tensor, augment: T.Augment | None = None, g: torch.Generator | None = None
    ) -> torch.Tensor:
        """Stored images (on the target device) -> normalized model input (B, C, H, W)."""
        x = raw.float()
        if raw.dtype == torch.uint8:
            x = x / 255
        x = augment(x, g) if augment is not None else T.center_crop(x, self.size)
        return T.normalize(x, self.mean, self.std)

    # ---- prediction and evaluation (what danlu.predict.Predictor asks of a preprocessor)
    def frame(self, rows: Any) -> pd.DataFrame:
        """Raw inputs -> a frame with the image column: a DataFrame as is; a path, a PIL
        image or an array (one image, or N images as N x ...); or a list of those."""
        if isinstance(rows, pd.DataFrame):
            if self.column not in rows.columns:
                hint = did_you_mean(self.column, rows.columns)
                raise DanluError(
                    f"input: image column '{self.column}' not found{hint};"
                    f" columns are: {', '.join(map(str, rows.columns))}"
                )
            return rows
        if isinstance(rows, str | Path) or hasattr(rows, "mode"):
            items = [rows]
        elif isinstance(rows, np.ndarray | torch.Tensor):
            arr = np.asarray(rows)
            one = arr.ndim == 2 or (arr.ndim == 3 and (self.channels == 3 or arr.shape[0] == 1))
            items = [arr] if one else list(arr)
        else:
            items = list(rows)
        return pd.DataFrame({self.column: pd.Series(items, dtype=object)})

    def dataset(self, frame: pd.DataFrame, where: str = "input", with_target: bool = True) -> Any:
        return self.split(frame, where, with_target=with_target)

    def read(self, path: str | Path) -> pd.DataFrame:
        """A file given to `danlu predict --input` or `danlu evaluate --data`: a CSV of image
        paths (and targets), a folder of images (class sub-folders give the label), one
        image, or an .npy/.npz."""
        path = Path(path)
        target = self.targets[0]
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DanluError(f"{path}: no images found ({', '.join(IMAGE_SUFFIXES[:5])}, ...)")
            df = pd.DataFrame({self.column: [str(p) for p in files]})
            if all(p.parent.parent == path for p in files):  # root/<class>/image: labelled
                df[target] = [_label(p.parent.name, self.classes) for p in files]
            return df
        if not path.exists():
            raise DanluError(f"{path}: file or folder not found")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return pd.DataFrame({self.column: [str(path)]})
        if suffix in (".npz", ".npy"):
            labels = None
            if suffix == ".npy":
                x = np.load(path, allow_pickle=False)
            else:
                x, labels = read_arrays(
                    path,
                    DataConfig(path=str(path), target=target),
                    ImageDataConfig(column=self.column),
                    need_labels=False,
                )
            df = pd.DataFrame({self.column: pd.Series(list(array_images(x, str(path))), dtype=object)})
            if labels is not None:
                df[target] = labels
            return df
        return read_csv(path, self.column, keep_paths=True)

    # ---- splits
    def split(
        self,
        frame: pd.DataFrame,
        where: str,
        augment: Any = None,
        images: torch.Tensor | None = None,
        with_target: bool = True,
    ) -> TensorData | ImageSplit:
        """A frame of images (paths or arrays) and targets -> a split: tensors when it fits in
        memory and is not augmented, else an ImageSplit that augments and/or decodes per
        batch. `images`: the frame's images already loaded."""
        y = self.transform_target(frame, where) if with_target else torch.zeros(len(frame), dtype=torch.long)
        aug = T.Augment(_augment_cfg(augment), self.size) if augment is not None else None
        if aug is not None and not aug.active:
            aug = None
        items = list(frame[self.column])
        base = frame.attrs.get("image_base")
        if base:  # paths as written in a CSV, relative to its folder
            items = [str(Path(base) / p) if isinstance(p, str) else p for p in items]
        if images is None and self.in_memory_for(items):
            images = self.load(items, where)
        if images is None:
            probe(items)  # every header, so a bad file fails before training
            return ImageSplit(self, y, aug, files=items, workers=self.workers)
        if aug is None:
            x = torch.cat([self.to_model(images[i : i + 1024]) for i in range(0, len(images), 1024)])
            return TensorData({"x": x}, y)
        return ImageSplit(self, y, aug, images=images)

    def in_memory_for(self, items: list[Any]) -> bool:
        """Arrays always; files when data.images.in_memory says so or (auto) they fit."""
        if not items or not isinstance(items[0], str):
            return True
        if self.in_memory != "auto":
            return bool(self.in_memory)
        return len(items) * self.channels * self.resize[0] * self.resize[1] <= self.memory_mb * 2**20


def _label(name: str, classes: list[Any] | None) -> Any:
    """A class folder's name as the label value training saw ('3' -> 3 for integer labels)."""
    numeric = any(isinstance(c, int) for c in classes or [])
    return int(name) if numeric and name.lstrip("-").isdigit() else name


def _augment_cfg(augment: Any) -> Any:
    from danlu.config import ImageAugmentConfig

    return augment if isinstance(augment, ImageAugmentConfig) else ImageAugmentConfig.model_validate(augment)


# --------------------------------------------------------------------------- batching
class ImageSplit:
    """A split whose batches are decoded (from memory or from files) and augmented as they
    are drawn. Same protocol as TensorData for the trainer: len, .y, .batches(...)."""

    def __init__(
        self,
        pre: ImagePreprocessor,
        y: torch.Tensor,
        augment: T.Augment | None,
        images: torch.Tensor | None = None,
        files: list[str] | None = None,
        workers: int = 0,
    ) -> None:
        self.pre, self.y, self.augment = pre, y, augment
        self.images, self.files, self.workers = images, files, workers

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> ImageBatches:
        if not shuffle:
            batch_size = min(batch_size, EVAL_BATCH)
        return ImageBatches(
            self, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world, device=device
        )


class _Files(torch.utils.data.Dataset):
    """Decodes one file per item in a DataLoader worker. Errors travel back as text, so the
    main process raises the one-line DanluError (a worker's exception would carry its
    traceback in the message)."""

    def __init__(self, pre: ImagePreprocessor, files: list[str]) -> None:
        self.pre, self.files = pre, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            return self.pre.load([self.files[i]], self.files[i])[0]
        except DanluError as e:
            return str(e)


def _collate(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    errors = [x for x in items if isinstance(x, str)]
    return errors[0] if errors else torch.stack(items)  # type: ignore[arg-type]


class _Plan:
    """The batch sampler of the on-disk loader: this epoch's batches, set before iterating."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageBatches:
    """One epoch's batches from batch `start` on. The order is TensorBatches' (a permutation
    seeded by (seed, epoch), sharded rank::world), so in-memory and on-disk sets, and a
    resumed run, all see the same batches."""

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.rows = len(split) // world
        if self.rows == 0:
            raise ValueError(f"{len(split)} rows cannot be shared by {world} processes")
        self.images = split.images.to(self.device) if split.images is not None else None
        self.y = split.y.to(self.device)
        self._plan, self._loader = _Plan(), None

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        order, _ = epoch_order(
            len(self.split), self.rows, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
            world=self.world,
        )
        return order

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order, bs = self.order(epoch), self.batch_size
        index = [order[i * bs : (i + 1) * bs] for i in range(start, len(self))]
        pre, aug = self.split.pre, self.split.augment
        for i, (idx, raw) in enumerate(zip(index, self._raw(index), strict=True), start=start):
            g = T.batch_generator(self.seed, epoch, i, self.rank) if aug is not None else None
            x = pre.to_model(raw.to(self.device, non_blocking=True), aug, g)
            yield {"x": x}, self.y[idx.to(self.y.device)]

    def _raw(self, index: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        if self.images is not None:
            for idx in index:
                yield self.images[idx.to(self.images.device)]
            return
        if self._loader is None:  # one loader, its workers kept from epoch to epoch
            self._loader = torch.utils.data.DataLoader(
                _Files(self.split.pre, self.split.files or []),
                batch_sampler=self._plan,
                num_workers=self.split.workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.split.workers > 0,
            )
        self._plan.batches = [idx.tolist() for idx in index]
        for raw in self._loader:
            if isinstance(raw, str):
                raise DanluError(raw)
            yield raw


# --------------------------------------------------------------------------- build
def build(cfg: DataConfig, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None) -> Any:
    """RunConfig.data -> Prepared(schema, ImagePreprocessor, splits, frames)."""
    from danlu.data.frames import Prepared, _split

    icfg = cfg.images or ImageDataConfig()
    _check_model(model_cfg)
    frames, arrays, targets, where = _read(cfg, icfg)
    if task_type == "auto":
        first = frames.get("all", frames.get("train"))
        labelled_by_folder = not arrays and targets == ["label"]
        task_type = "classification" if cfg.source or labelled_by_folder else infer_task(first[targets[0]])
    if "all" in frames:
        frames = _split(frames.pop("all"), cfg, task_type, targets, seed, where)
    elif "val" not in frames and cfg.split.val > 0:
        no_test = cfg.model_copy(update={"split": cfg.split.model_copy(update={"test": 0.0})})
        frames.update(_split(frames.pop("train"), no_test, task_type, targets, seed, where))
    train = frames["train"]
    labels = TabularPreprocessor(
        features=[],
        numeric=[],
        categorical=[],
        encoding="onehot",
        missing="error",
        task=task_type,
        targets=targets,
    )
    labels._fit_target(train, f"{where} (train split)", cfg.scale_target)

    column = icfg.column
    items = list(train[column])
    if arrays:
        stacked = np.stack(items)
        channels = stacked.shape[1] if icfg.channels == "auto" else int(icfg.channels)
        native = list(stacked.shape[-2:])
        value_range = (
            [0.0, 255.0] if stacked.dtype == np.uint8 else [float(stacked.min()), float(stacked.max())]
        )
    else:
        (h, w), gray = probe(items[:256])
        channels = gray if icfg.channels == "auto" else int(icfg.channels)
        native, value_range = [h, w], [0.0, 255.0]
    size = _size(icfg.size) or _size(icfg.resize) or native
    resize = _size(icfg.resize) or size
    if resize[0] < size[0] or resize[1] < size[1]:
        raise DanluError(
            f"data.images.resize {resize} is smaller than data.images.size {size}; crops need room"
        )
    pre = ImagePreprocessor(
        column=column,
        channels=channels,
        size=size,
        resize=resize,
        value_range=value_range,
        mean=[0.0] * channels,
        std=[1.0] * channels,
        labels=labels,
        augment=icfg.augment.model_dump(mode="json"),
        in_memory=icfg.in_memory,
        memory_mb=icfg.memory_mb,
        workers=icfg.workers,
    )
    # the memory budget counts every split; each split is then decoded once (or per batch)
    in_memory = pre.in_memory_for([x for df in frames.values() for x in df[column]])
    loaded = {
        name: pre.load(list(df[column]), f"{where} ({name} split)") if in_memory else None
        for name, df in frames.items()
    }
    if icfg.normalize == "auto":
        pre.mean, pre.std = channel_stats(pre, train, f"{where} (train split)", loaded["train"])
    splits = {
        name: pre.split(
            df, f"{where} ({name} split)", icfg.augment if name == "train" else None, loaded[name]
        )
        for name, df in frames.items()
    }
    return Prepared(pre.schema(), pre, splits, frames)  # type: ignore[arg-type]


def channel_stats(
    pre: ImagePreprocessor, train: pd.DataFrame, where: str, images: torch.Tensor | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over every pixel of the training images, as the model sees
    them before normalization (scaled to [0, 1], center-cropped), accumulated in float64."""
    plain = ImagePreprocessor(**{**pre.__dict__, "mean": [0.0] * pre.channels, "std": [1.0] * pre.channels})
    if images is not None:
        chunks: Any = (plain.to_model(images[i : i + 1024]) for i in range(0, len(images), 1024))
    else:
        split = plain.split(train, where)
        chunks = (x["x"] for x, _ in split.batches(EVAL_BATCH, shuffle=False, seed=0).epoch(0))
    total = torch.zeros(pre.channels, dtype=torch.float64)
    squares = torch.zeros(pre.channels, dtype=torch.float64)
    count = 0
    for x in chunks:
        v = x.double()
        total += v.sum(dim=(0, 2, 3))
        squares += (v * v).sum(dim=(0, 2, 3))
        count += v.shape[0] * v.shape[2] * v.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant channel stays finite
    return mean.tolist(), std.tolist()


def _check_model(model_cfg: Any) -> None:
    t = getattr(model_cfg, "type", None)
    if t is None or t in IMAGE_MODELS or ":" in t:
        return
    raise DanluError(
        f"model.type {t} does not take images, but the data holds images; use model.type cnn or resnet"
    )


def _read(
    cfg: DataConfig, icfg: ImageDataConfig
) -> tuple[dict[str, pd.DataFrame], bool | None, list[str], str]:
    """-> frames ("all", or "train"/"val"/"test") with the image column holding paths or
    arrays, whether the images are arrays (None for files), the target names, and where."""
    column = icfg.column
    if cfg.source:
        if cfg.source != "digits_images":
            raise DanluError(
                f"data.source '{cfg.source}' is not an image dataset; the built-in image set is digits_images"
            )
        df, x = digits_frame()
        df.insert(0, column, list(x[:, None]))
        return {"all": df}, True, ["label"], "data.source digits_images"
    named = (
        {"all": cfg.path}
        if cfg.path
        else {s: getattr(cfg, s) for s in ("train", "val", "test") if getattr(cfg, s)}
    )
    frames: dict[str, pd.DataFrame] = {}
    arrays, targets = None, None
    for split, p in named.items():
        path = Path(p)
        if path.is_dir():
            df = read_folder(path).rename(columns={"image": column})
            t = ["label"]
        elif path.suffix.lower() in (".npy", ".npz"):
            x, y = read_arrays(path, cfg, icfg)
            df = pd.DataFrame({column: list(array_images(x, str(path))), "label": y})
            t, arrays = ["label"], True
        else:
            if not path.exists():
                raise DanluError(f"{path}: data file or image folder not found")
            df = read_csv(path, column)
            if cfg.target is None:
                raise DanluError(f"{path}: data.target is not set; columns are: {', '.join(df.columns)}")
            t = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target)
            for name in t:
                if name not in df.columns:
                    raise DanluError(
                        f"{path}: target column '{name}' not found{did_you_mean(name, df.columns)};"
                        f" columns are: {', '.join(df.columns)}"
                    )
        if targets is not None and t != targets:
            raise DanluError(
                f"{path}: the {split} data's label column {t} differs from the train data's {targets}"
            )
        targets = t
        frames[split] = df
    return frames, arrays, targets or ["label"], str(cfg.path or cfg.train)
