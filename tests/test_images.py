"""Images: transforms against Pillow/NumPy references, CNN/ResNet shapes, the DataLoader
path against the in-memory path, exact resume, the CLI end to end, bad input, examples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_user_error

PIL = pytest.importorskip("PIL", reason="image support needs Pillow (pip install 'danlu[images]')")
from PIL import Image, ImageEnhance  # noqa: E402

import danlu  # noqa: E402
from danlu import config, data, models  # noqa: E402
from danlu.config import ImageAugmentConfig  # noqa: E402
from danlu.data import transforms as T  # noqa: E402
from danlu.data.batches import batches  # noqa: E402
from danlu.data.tabular import TensorData  # noqa: E402
from danlu.errors import DanluError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
from make_shapes import make as make_shapes  # noqa: E402


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """H x W x C uint8 -> C x H x W float in [0, 1]."""
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255


# --------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("size", [(16, 20), (50, 40), (37, 23)])
def test_resize_matches_pillow_bilinear(size: tuple[int, int]) -> None:
    # a smooth image: antialiasing filters differ in how they treat single-pixel noise
    yy, xx = np.mgrid[0:37, 0:23]
    a = np.stack([128 + 100 * np.sin(xx / 3.0), 128 + 100 * np.cos(yy / 4.0), (xx * yy) % 256], -1)
    a = a.clip(0, 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64)
    out = T.resize(as_tensor(a), size).permute(1, 2, 0).numpy() * 255
    assert out.shape == ref.shape
    assert np.abs(out - ref).mean() < 1.0 and np.abs(out - ref).max() <= 6


def test_flip_crop_gray_and_normalize_by_hand() -> None:
    a = rgb(9, 12)
    x = as_tensor(a)
    assert torch.equal(T.hflip(x), as_tensor(np.ascontiguousarray(a[:, ::-1])))
    assert torch.equal(T.center_crop(x, (5, 6)), as_tensor(np.ascontiguousarray(a[2:7, 3:9])))
    gray = np.asarray(Image.fromarray(a).convert("L"), dtype=np.float64)  # Pillow rounds to integers
    assert np.abs(T.to_gray(x)[0].numpy() * 255 - gray).max() <= 0.51
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    ref = (a / 255.0 - np.asarray(mean)) / np.asarray(std)
    got = T.normalize(x, mean, std).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_color_jitter_matches_pillow_enhance() -> None:
    a = rgb(12, 10, seed=3)
    x = as_tensor(a)[None]
    f = torch.tensor([1.3])
    for ours, pil in (
        (T.adjust_brightness, ImageEnhance.Brightness),
        (T.adjust_contrast, ImageEnhance.Contrast),
        (T.adjust_saturation, ImageEnhance.Color),
    ):
        ref = np.asarray(pil(Image.fromarray(a)).enhance(1.3), dtype=np.float64)
        got = ours(x, f)[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(got - ref).max() <= 2.0, ours.__name__  # Pillow works in integers


def test_random_crop_with_padding_is_an_exact_shifted_crop() -> None:
    a = rgb(10, 10, seed=1)
    x = as_tensor(a)[None].repeat(16, 1, 1, 1)
    aug = T.Augment(ImageAugmentConfig(random_crop={"padding": 2}), (10, 10))
    out = aug(x, T.batch_generator(0, 0, 0)).numpy()
    padded = np.pad(a / 255.0, ((2, 2), (2, 2), (0, 0)))
    crops = [padded[i : i + 10, j : j + 10].transpose(2, 0, 1) for i in range(5) for j in range(5)]
    seen = set()
    for img in out:
        match = [k for k, c in enumerate(crops) if np.abs(c - img).max() < 1e-5]
        assert match, "an augmented image is not a shifted crop of the padded input"
        seen.add(match[0])
    assert len(seen) > 3  # the offsets vary


def _bilinear_reference(img: np.ndarray, angle: float, tx: float, ty: float) -> np.ndarray:
    """Rotate by `angle` about the center and shift by (tx, ty) pixels, by hand: each output
    pixel center looks up input (R(angle) u + t) + center, bilinear, zeros outside."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    cos, sin = math.cos(angle), math.sin(angle)
    for i in range(h):
        for j in range(w):
            u, v = j + 0.5 - w / 2, i + 0.5 - h / 2
            x = cos * u - sin * v + tx + w / 2 - 0.5
            y = sin * u + cos * v + ty + h / 2 - 0.5
            x0, y0 = math.floor(x), math.floor(y)
            for yy, xx, wt in (
                (y0, x0, (x0 + 1 - x) * (y0 + 1 - y)),
                (y0, x0 + 1, (x - x0) * (y0 + 1 - y)),
                (y0 + 1, x0, (x0 + 1 - x) * (y - y0)),
                (y0 + 1, x0 + 1, (x - x0) * (y - y0)),
            ):
                if 0 <= yy < h and 0 <= xx < w:
                    out[:, i, j] += wt * img[:, yy, xx]
    return out


def test_rotation_and_translation_match_hand_computation() -> None:
    a = as_tensor(rgb(11, 11, seed=2))[None].repeat(3, 1, 1, 1)
    cfg = ImageAugmentConfig(rotation=30, translate=0.2)
    out = T.Augment(cfg, (11, 11))(a, T.batch_generator(5, 1, 2))
    g = T.batch_generator(5, 1, 2)  # the same draws, in the same order: angles, then shifts
    angles = torch.deg2rad(T._uniform(3, -30, 30, g))
    tx, ty = T._uniform(3, -0.2, 0.2, g) * 11, T._uniform(3, -0.2, 0.2, g) * 11
    for k in range(3):
        ref = _bilinear_reference(a[k].double().numpy(), float(angles[k]), float(tx[k]), float(ty[k]))
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-4)


def test_augmentation_is_a_function_of_seed_epoch_and_batch() -> None:
    x = as_tensor(rgb(16, 16))[None].repeat(8, 1, 1, 1)
    cfg = ImageAugmentConfig(random_crop={"scale": [0.5, 1.0]}, hflip=0.5, rotation=10, brightness=0.3)
    aug = T.Augment(cfg, (12, 12))
    a, b = aug(x, T.batch_generator(1, 2, 3)), aug(x, T.batch_generator(1, 2, 3))
    assert a.shape == (8, 3, 12, 12) and torch.equal(a, b)
    assert not torch.equal(a, aug(x, T.batch_generator(1, 2, 4)))


def test_normalization_stats_are_the_training_splits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    cfg = config.load(
        {"data": {"source": "digits_images", "split": {"val": 0.1, "test": 0.2}}, "model": {"type": "cnn"}}
    )
    prepared = data.build(cfg.data, "auto", 0, cfg.model)
    train_rows = prepared.frames["train"].index.to_numpy()
    pixels = load_digits().images[train_rows] / 16.0  # digits hold 0..16
    pre = prepared.preprocessor
    assert pre.mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert pre.std == pytest.approx([pixels.std()], abs=1e-9)
    x = prepared.splits["train"].inputs["x"]  # no augmentation: tensors
    np.testing.assert_allclose(x[:, 0].numpy(), (pixels - pixels.mean()) / pixels.std(), atol=1e-5)
    assert prepared.schema.image_shape == [1, 8, 8] and prepared.schema.n_classes == 10
    assert sum(len(s) for s in prepared.splits.values()) == 1797


# --------------------------------------------------------------------------- models
def _schema(c: int, h: int, w: int) -> data.Schema:
    return data.Schema(
        "classification", ["image"], [], [], c * h * w, [], ["label"], list(range(5)), "image", [c, h, w]
    )


@pytest.mark.parametrize(
    "model",
    [
        {"type": "cnn"},
        {
            "type": "cnn",
            "pooling": "avg",
            "convs_per_block": 2,
            "batch_norm": False,
            "activation": "gelu",
            "dropout": 0.2,
        },
        {"type": "resnet"},
        {"type": "resnet", "blocks": [1, 2], "widths": [8, 16]},
    ],
)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 33, 47), (3, 1, 1)])
def test_cnn_and_resnet_output_shapes(model: dict, shape: tuple[int, int, int]) -> None:
    cfg = config.load({"data": {"source": "digits_images"}, "model": model}).model
    net = models.build(cfg, _schema(*shape), 5)
    net.eval()
    assert net(torch.randn(2, *shape)).shape == (2, 5)


def test_resnet_large_stem_and_its_parts() -> None:
    cfg = config.load({"data": {"source": "digits_images"}, "model": {"type": "resnet"}}).model
    net = models.build(cfg, _schema(3, 112, 96), 7)
    assert isinstance(net.stem[0], torch.nn.Conv2d) and net.stem[0].kernel_size == (7, 7)
    assert len(net.stages) == 6  # blocks [2, 2, 2]
    assert net(torch.randn(1, 3, 112, 96)).shape == (1, 7)


def test_image_models_and_data_must_agree() -> None:
    tab = config.load({"data": {"source": "iris"}, "model": {"type": "cnn"}})
    prepared = data.build(tab.data, "auto", 0, tab.model)
    with pytest.raises(
        DanluError, match="takes images, but the data holds tabular data with 4 input columns"
    ):
        models.build(tab.model, prepared.schema, 3)
    img = config.load({"data": {"source": "digits_images"}, "model": {"type": "mlp"}})
    with pytest.raises(DanluError, match="model.type mlp does not take images.*use model.type cnn or resnet"):
        data.build(img.data, "auto", 0, img.model)


# --------------------------------------------------------------------------- data paths
def write_folder(root: Path, per_class: int = 12, gray: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            h, w = (14, 14) if i % 3 else (18, 11)  # mixed sizes: resized to the common one
            arr = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
            if label == "b":
                arr[: h // 2] = 255 - arr[: h // 2] // 4
            Image.fromarray(arr).save(root / label / f"{i:02d}.{'png' if i % 2 else 'bmp'}")
    return root


def _build(root: Path, **images: object) -> data.Prepared:
    cfg = config.load({"data": {"path": str(root), "split": {"val": 0.2, "test": 0.2}, "images": images}})
    return data.build(cfg.data, "auto", 7, None)


def _epochs(split: object, epochs: int = 2, **kw: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    source = batches(split, 5, seed=7, **{"shuffle": True, **kw})
    for e in range(epochs):
        out += [(x["x"], y) for x, y in source.epoch(e)]
    return out


def test_dataloader_and_in_memory_paths_give_the_same_batches(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    aug = {"random_crop": {"padding": 1}, "hflip": 0.5, "rotation": 10, "contrast": 0.2}
    mem = _build(root, size=12, resize=14, in_memory=True, augment=aug)
    disk = _build(root, size=12, resize=14, in_memory=False, workers=2, augment=aug)
    assert type(mem.splits["train"]).__name__ == type(disk.splits["train"]).__name__ == "ImageSplit"
    assert mem.splits["train"].files is None and disk.splits["train"].files is not None
    assert mem.preprocessor.mean == pytest.approx(disk.preprocessor.mean, abs=1e-9)
    a, b = _epochs(mem.splits["train"]), _epochs(disk.splits["train"])
    assert len(a) == len(b) == 2 * math.ceil(len(mem.splits["train"]) / 5)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)
    # without augmentation the in-memory split is plain tensors, batched like any table
    assert isinstance(mem.splits["val"], TensorData)
    for (xa, ya), (xb, yb) in zip(_epochs(mem.splits["val"]), _epochs(disk.splits["val"]), strict=True):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)
    # sharded by rank like TensorBatches: two ranks see disjoint rows of the same permutation
    r0 = batches(disk.splits["train"], 4, shuffle=True, seed=7, rank=0, world=2)
    r1 = batches(disk.splits["train"], 4, shuffle=True, seed=7, rank=1, world=2)
    assert set(r0.order(0).tolist()).isdisjoint(r1.order(0).tolist())


def test_mid_epoch_start_continues_exactly(tmp_path: Path) -> None:
    prepared = _build(write_folder(tmp_path / "imgs"), size=12, augment={"rotation": 20, "hflip": 0.5})
    source = batches(prepared.splits["train"], 4, shuffle=True, seed=3)
    whole = list(source.epoch(1))
    tail = list(source.epoch(1, start=2))
    assert len(tail) == len(whole) - 2
    for (xa, ya), (xb, yb) in zip(whole[2:], tail, strict=True):
        assert torch.equal(xa["x"], xb["x"]) and torch.equal(ya, yb)


def test_grayscale_folder_and_arrays(tmp_path: Path) -> None:
    gray = _build(write_folder(tmp_path / "gray", gray=True))
    assert gray.schema.image_shape == [1, 14, 14] and gray.schema.class_names == ["a", "b"]
    forced = _build(tmp_path / "gray", channels=3)
    assert forced.schema.image_shape == [3, 14, 14]
    # .npz with x/y, channels-last uint8
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 10, 9, 3), dtype=np.uint8)
    y = np.repeat(["cat", "dog"], 20)
    np.savez(tmp_path / "set.npz", x=x, y=y)
    cfg = config.load({"data": {"path": str(tmp_path / "set.npz")}, "model": {"type": "cnn"}})
    prepared = data.build(cfg.data, "auto", 0, cfg.model)
    assert prepared.schema.image_shape == [3, 10, 9] and prepared.schema.class_names == ["cat", "dog"]
    # .npy needs its labels named
    np.save(tmp_path / "x.npy", x[..., 0])
    cfg = config.load({"data": {"path": str(tmp_path / "x.npy"), "images": {}}})
    with pytest.raises(DanluError, match="data.images.labels"):
        data.build(cfg.data, "auto", 0, None)
    (tmp_path / "labels.txt").write_text("\n".join(y))
    cfg = config.load(
        {"data": {"path": str(tmp_path / "x.npy"), "images": {"labels": str(tmp_path / "labels.txt")}}}
    )
    assert data.build(cfg.data, "auto", 0, None).schema.image_shape == [1, 10, 9]


def test_resume_on_images_equals_uninterrupted(tmp_path: Path) -> None:
    body = {
        "seed": 1,
        "data": {
            "source": "digits_images",
            "split": {"val": 0.1, "test": 0.2},
            "images": {"augment": {"rotation": 10, "translate": 0.1}},
        },
        "model": {"type": "cnn", "channels": [8, 16]},
        "train": {"epochs": 4, "batch_size": 64, "early_stopping": None, "device": "cpu"},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
    }

    def rows(run: danlu.Run) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time"} for r in run.history]

    full = danlu.train(body, progress="quiet")
    part = danlu.train(body, {"train.epochs": 2}, progress="quiet")
    resumed = danlu.train(None, {"train.epochs": 4}, resume=part.path, progress="quiet")
    assert rows(resumed) == rows(full)
    assert resumed.metrics["metrics"]["accuracy"] == full.metrics["metrics"]["accuracy"]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of image paths relative to it, with a label column, over generated shapes."""
    root = tmp_path_factory.mktemp("shapes_csv")
    make_shapes(root / "pics", per_class=16, seed=1)
    rows = [(str(p.relative_to(root)), p.parent.name) for p in sorted((root / "pics").rglob("*.png"))]
    pd.DataFrame(rows, columns=["file", "shape"]).to_csv(root / "shapes.csv", index=False)
    return root / "shapes.csv"


@pytest.mark.slow
def test_cli_train_evaluate_predict_on_a_csv_of_image_paths(run_cli, write_config, tmp_path, shapes_csv):
    cfg = write_config(
        {
            "data": {
                "path": str(shapes_csv),
                "target": "shape",
                "images": {"column": "file", "size": 24, "augment": {"hflip": 0.5}},
            },
            "model": {"type": "cnn", "channels": [8, 16]},
            "train": {"epochs": 2},
        }
    )
    r = run_cli("train", cfg)
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "model.json").read_text())
    assert meta["schema"]["image_shape"] == [3, 24, 24] and meta["preprocessor"]["kind"] == "image"
    assert len(meta["preprocessor"]["mean"]) == 3

    r = run_cli("evaluate", run)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "triangle" in r.stdout
    summary = json.loads((run / "metrics.json").read_text())
    assert np.asarray(summary["metrics"]["confusion_matrix"]).sum() == summary["rows"] == 10

    folder = shapes_csv.parent / "pics"
    r = run_cli("predict", run, "--input", folder / "circle", "--proba")  # a folder of images
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(pd.io.common.StringIO(r.stdout))
    assert len(out) == 16 and {"file", "prediction", "proba_circle"} <= set(out.columns)
    np.testing.assert_allclose(
        out[["proba_circle", "proba_square", "proba_triangle"]].sum(axis=1), 1, atol=1e-5
    )

    one = folder / "square" / "003.png"
    r = run_cli("predict", run, "--input", shapes_csv, "--output", tmp_path / "p.csv", "--proba")  # the CSV
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns[:2]) == ["file", "shape"] and len(table) == 48
    row = table.loc[table["file"] == "pics/square/003.png"]  # paths stay as the CSV wrote them

    # Python: paths, PIL images and arrays of the same image predict the same
    predictor = danlu.load(run)
    pil = Image.open(one)
    p = predictor.predict_proba([one, str(one), pil, np.asarray(pil)])
    np.testing.assert_allclose(p, np.repeat(p[:1], 4, axis=0), atol=1e-6)
    np.testing.assert_allclose(
        p[0], row[["proba_circle", "proba_square", "proba_triangle"]].to_numpy()[0], atol=1e-5
    )
    assert predictor.predict(one)[0] == row["prediction"].item()
    # evaluate on a labelled folder (class sub-folders) instead of the run's split
    summary = danlu.evaluate(run, data=folder, plots=False)
    assert summary["rows"] == 48 and summary["metrics"]["accuracy"] >= 0.0


def test_npz_trains_and_predicts_through_the_api(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6, 6)).astype(np.float32)
    y = (x[:, :3].mean(axis=(1, 2)) > x[:, 3:].mean(axis=(1, 2))).astype(int)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    run = danlu.train(
        {
            "data": {"path": str(tmp_path / "d.npz"), "split": {"val": 0.0, "test": 0.25}},
            "model": {"type": "cnn", "channels": [8]},
            "train": {"epochs": 2, "monitor": "train.loss", "device": "cpu"},
            "eval": {"plots": False},
            "output": {"dir": str(tmp_path / "runs")},
        },
        progress="quiet",
    )
    assert run.metrics["rows"] == 15
    pred = run.load()
    assert pred.predict_proba(x[:5]).shape == (5, 2)  # a batch of gray images, N x H x W
    assert pred.predict_proba(x[0]).shape == (1, 2)  # one image


# --------------------------------------------------------------------------- bad input
def test_bad_image_folders(invoke_cli, write_config, tmp_path):
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    (empty / "dog" / "notes.md").write_text("not an image")
    assert_user_error(
        invoke_cli("train", write_config({"data": {"path": str(empty)}, "model": {"type": "cnn"}})),
        str(empty),
        "no images found",
        "one sub-folder per class",
    )
    single = tmp_path / "single"
    (single / "cat").mkdir(parents=True)
    Image.fromarray(rgb(8, 8)).save(single / "cat" / "a.png")
    assert_user_error(
        invoke_cli("train", write_config({"data": {"path": str(single)}, "model": {"type": "cnn"}})),
        "only one class folder",
        "'cat'",
        "at least two",
    )


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_is_named(run_cli, write_config, tmp_path, in_memory):
    root = write_folder(tmp_path / "imgs", per_class=6)
    if in_memory:  # not an image at all: found when the files are opened
        (root / "b" / "broken.png").write_bytes(b"this is no image at all")
        expected = "corrupt or not an image"
    else:  # a truncated PNG: the header is fine, decoding fails in a DataLoader worker
        good = (root / "a" / "01.png").read_bytes()
        (root / "b" / "broken.png").write_bytes(good[: len(good) // 2])
        expected = "cannot read image"
    body = {
        "data": {"path": str(root), "split": {"val": 0.0, "test": 0.0}, "images": {"in_memory": in_memory}},
        "model": {"type": "cnn"},
        "train": {"monitor": "train.loss"},
    }
    line = assert_user_error(run_cli("train", write_config(body)), "broken.png", expected)
    assert not (tmp_path / "runs").exists(), line


def test_image_column_missing(invoke_cli, write_config, tmp_path, shapes_csv):
    cfg = write_config(
        {
            "data": {"path": str(shapes_csv), "target": "shape", "images": {"column": "path"}},
            "model": {"type": "cnn"},
        }
    )
    assert_user_error(
        invoke_cli("train", cfg), "image column 'path' not found", "file, shape", "data.images.column"
    )


# --------------------------------------------------------------------------- examples
def test_init_images_template_is_a_valid_config() -> None:
    text = config.template("images")
    cfg = config.validate(__import__("yaml").safe_load(text))
    assert cfg.model.type == "cnn" and cfg.data.images is not None and cfg.data.path == "images/"


@pytest.mark.slow
def test_digits_cnn_example(tmp_path: Path) -> None:
    run = danlu.train(
        EXAMPLES / "digits_cnn.yaml",
        {"output.dir": str(tmp_path / "runs"), "eval.plots": False},
        progress="quiet",
    )
    m = run.metrics
    assert m["split"] == "test" and m["rows"] == 360  # stratified 80/20 of 1797
    assert m["metrics"]["accuracy"] >= 0.98  # (its speed is a benchmark's business: no timing here)


@pytest.mark.slow
def test_image_folder_example(tmp_path: Path, run_cli) -> None:
    shapes = tmp_path / "shapes"
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_shapes.py"), "--out", str(shapes)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 300 images" in r.stdout
    assert sorted(p.name for p in shapes.iterdir()) == ["circle", "square", "triangle"]
    run = danlu.train(
        EXAMPLES / "image_folder.yaml",
        {"data.path": str(shapes), "output.dir": str(tmp_path / "runs"), "eval.plots": False},
        progress="quiet",
    )
    assert run.metrics["metrics"]["accuracy"] >= 0.9
    r = run_cli("predict", run.path, "--input", shapes / "triangle" / "000.png")
    assert r.returncode == 0 and "triangle" in r.stdout.splitlines()[1]
