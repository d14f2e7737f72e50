"""Image folders: real PNG/JPEG files written by PIL, a corrupt file, seeded and explicit test splits."""
import json

import numpy as np
import pytest
from absl import logging
from PIL import Image

from jaxdist.data import sources
from jaxdist.errors import ConfigError
from tests.helpers import run_cli, tiny_config

CLASSES = ("cat", "dog", "eel")


def write_folder(root, per_class=6, size=(12, 10), corrupt=0):
    """`per_class` images per class, alternating PNG and JPEG; plus `corrupt` garbage .jpg files in cat/."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            pixels[..., label] = 255  # a class-dependent colour, so the label is visible in the pixels
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    for i in range(corrupt):
        (root / "cat" / f"broken{i}.jpg").write_bytes(b"not an image at all")
    return root


def folder_config(path, **data):
    return tiny_config(**{"data.name": "folder", "data.path": str(path), **{f"data.{k}": v for k, v in data.items()}})


def test_folder_reads_classes_and_splits_each_class(tmp_path):
    root = write_folder(tmp_path / "train", per_class=10)
    data = sources.load(folder_config(root, val_fraction=0.2).data)
    assert data.class_names == CLASSES and data.num_classes == 3
    assert (data.train.size, data.test.size) == (24, 6)
    assert data.image_shape == (12, 10, 3)
    labels = [data.test.source[i][1] for i in range(data.test.size)]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]  # 20% of each class
    image, label = data.train.source[0]
    assert image.dtype == np.uint8 and image.shape == (12, 10, 3) and image[..., label].mean() > 200  # JPEG is lossy
    test_files = set(data.test.source.files)
    assert not test_files & set(data.train.source.files)
    again = sources.load(folder_config(root, val_fraction=0.2).data)
    assert set(again.test.source.files) == test_files  # the seeded split is fixed


def test_corrupt_files_are_skipped_counted_and_named(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "train", corrupt=7)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
    data = sources.load(folder_config(root).data)
    assert data.train.size + data.test.size == 18
    assert len(warnings) == 1 and warnings[0].startswith("skipped 7 unreadable image(s)")
    assert "broken0.jpg" in warnings[0] and warnings[0].endswith(" ...")  # first 5 named, then "..."


def test_strict_stops_at_the_first_corrupt_file(tmp_path):
    root = write_folder(tmp_path / "train", corrupt=1)
    with pytest.raises(ConfigError, match=r"unreadable image .*cat/broken0.jpg \(1 in"):
        sources.load(folder_config(root, strict=True).data)


def test_separate_val_folder_and_resizing_of_mixed_sizes(tmp_path):
    write_folder(tmp_path / "train", size=(12, 10))
    write_folder(tmp_path / "val", per_class=2, size=(9, 9))
    with pytest.raises(ConfigError, match="set data.image_size"):
        sources.load(folder_config(tmp_path / "train", val_path=str(tmp_path / "val")).data)
    data = sources.load(folder_config(tmp_path / "train", val_path=str(tmp_path / "val"), image_size=8).data)
    assert (data.train.size, data.test.size, data.image_shape) == (18, 6, (8, 8, 3))
    image, _ = data.test.source[0]
    assert data.test.transform(image, None).shape == (8, 8, 3)


def test_folder_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        sources.load(folder_config(tmp_path / "missing").data)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no .jpg/.jpeg/.png files"):
        sources.load(folder_config(tmp_path / "empty").data)
    write_folder(tmp_path / "train")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "val" / "cat" / "0.png")
    with pytest.raises(ConfigError, match="data.val_path has classes"):
        sources.load(folder_config(tmp_path / "train", val_path=str(tmp_path / "val")).data)


def test_training_on_a_folder_saves_the_class_names(tmp_path, cli_env):
    root = write_folder(tmp_path / "train", corrupt=1)
    workdir = tmp_path / "run"
    result = run_cli(
        cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.data.name=folder", f"--config.data.path={root}", "--config.data.augment=flip",
         "--config.model.num_classes=3", "--config.batch_size=8", "--config.total_steps=4",
         "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint_every=4", "--config.cpu_devices=2",
         "--config.schedule.warmup_steps=0", timeout=300, core_only=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((workdir / "classes.json").read_text()) == list(CLASSES)
    assert "skipped 1 unreadable image(s)" in result.stderr
    train = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][0]
    # Waiting for input is part of each step's wall time: at most the step time the rate implies.
    assert train["split"] == "train" and 0 <= train["input_wait_ms"] <= 1e3 * 8 / train["images_per_s"]

