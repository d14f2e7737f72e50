"""Image folders in the common ImageFolder layout: DIR/<class name>/<image>.{jpg,jpeg,png}.

Classes are the sorted subfolder names. Every file is checked once at startup (PIL's open + verify,
in threads): a file PIL cannot read is skipped, counted and named in a warning, or, with
`data.strict=True`, stops the run with its path. Without `data.val_path`, a fixed fraction of each
class (`data.val_fraction`, chosen with `data.split_seed`) becomes the test split.
"""
import concurrent.futures
import os

import numpy as np
from absl import logging
from PIL import Image

from jaxdist.errors import ConfigError

EXTENSIONS = (".jpg", ".jpeg", ".png")
_NAMED_IN_WARNING = 5


class FolderSource:
    def __init__(self, files: list[str], labels: np.ndarray):
        self.files, self.labels = files, labels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB")), int(self.labels[i])
        except (OSError, ValueError) as e:  # passed the startup check but fails to decode (e.g. truncated JPEG)
            raise OSError(f"cannot decode image {path} ({e}); remove or replace the file") from None


def _listing(root: str) -> tuple[list[str], list[int], list[str]]:
    if not os.path.isdir(root):
        raise ConfigError(f"image folder {root!r} does not exist; data.path must be a directory with one "
                          "subfolder of images per class")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(names):
                if f.lower().endswith(EXTENSIONS):
                    files.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not files:
        raise ConfigError(f"image folder {root!r} has no {'/'.join(EXTENSIONS)} files in class subfolders "
                          f"(found subfolders: {classes or 'none'})")
    return files, labels, classes


def _check(path: str) -> tuple[int, int] | None:
    """(height, width), or None if PIL cannot read the file."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
        return size[1], size[0]
    except Exception:  # PIL raises many types for bad files; each one means "skip this file"
        return None


def _scan(root: str, strict: bool, threads: int = 16):
    files, labels, classes = _listing(root)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(_check, files))
    bad = [f for f, s in zip(files, sizes) if s is None]
    if len(bad) == len(files):
        raise ConfigError(f"no image in {root} can be read ({len(bad)} files, e.g. {bad[0]}); check the files' format")
    if bad and strict:
        raise ConfigError(f"unreadable image {bad[0]} ({len(bad)} in {root}); remove it, or set data.strict=False "
                          "to skip unreadable files")
    if bad:
        logging.warning("skipped %d unreadable image(s) in %s: %s%s", len(bad), root,
                        ", ".join(bad[:_NAMED_IN_WARNING]), " ..." if len(bad) > _NAMED_IN_WARNING else "")
    keep = [s is not None for s in sizes]
    files = [f for f, k in zip(files, keep) if k]
    labels = np.asarray([y for y, k in zip(labels, keep) if k], np.int32)
    return files, labels, classes, {s for s in sizes if s is not None}, len(bad)


def _seeded_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a `fraction` of the files (at least one where a class has two or more) goes to test."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == label))
        take = max(1, round(fraction * len(ids))) if len(ids) > 1 else 0
        test.extend(ids[:take])
    test = np.sort(np.asarray(test, np.int64))
    return np.setdiff1d(np.arange(len(labels)), test), test


def load(data_config):
    """(train source, test source, class names) for data.path and data.val_path or a seeded split."""
    if not data_config.path:
        raise ConfigError("data.name='folder' needs data.path, a directory with one subfolder of images per class")
    files, labels, classes, sizes, skipped = _scan(data_config.path, data_config.strict)
    if len(classes) < 2:
        raise ConfigError(f"image folder {data_config.path} has {len(classes)} class subfolder ({', '.join(classes)}); a "
                          "classifier needs images of two classes or more, one subfolder each")
    if data_config.val_path:
        val_files, val_labels, val_classes, val_sizes, val_skipped = _scan(data_config.val_path, data_config.strict)
        if val_classes != classes:
            raise ConfigError(f"data.val_path has classes {val_classes} but data.path has {classes}; they must match")
        train, test = FolderSource(files, labels), FolderSource(val_files, val_labels)
        sizes, skipped = sizes | val_sizes, skipped + val_skipped
    else:
        if not 0 < data_config.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={data_config.val_fraction} must be in (0, 1) when data.val_path is unset")
        train_ids, test_ids = _seeded_split(labels, data_config.val_fraction, data_config.split_seed)
        train = FolderSource([files[i] for i in train_ids], labels[train_ids])
        test = FolderSource([files[i] for i in test_ids], labels[test_ids])
    if not len(test):
        raise ConfigError(f"no test images: each class in {data_config.path} has a single image; add images or "
                          "set data.val_path")
    if len(sizes) > 1 and not data_config.image_size:
        raise ConfigError(f"images in {data_config.path} differ in size ({len(sizes)} sizes, e.g. "
                          f"{sorted(sizes)[:2]}); set data.image_size so they can be batched")
    logging.info("image folder %s: %d classes, %d train / %d test images, %d skipped",
                 data_config.path, len(classes), len(train), len(test), skipped)
    return train, test, classes
