"""Datasets as random-access splits: `split.get(indices) -> (images, labels)`.

Random access (not streams) is what makes batches a pure function of (seed, step): resume needs no
iterator state, and every process can read just its own rows of a global batch.
Images come out float32 NHWC, normalized per dataset; labels int32.
"""
import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from jaxdist.config import ConfigError

# Per-channel mean and std of the training images, in [0, 1] units.
_TFDS_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = ("digits", "synthetic", *_TFDS_STATS)


@dataclasses.dataclass(frozen=True)
class Split:
    size: int
    get: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]


def load(data_config, seed: int = 0) -> Dataset:
    name = data_config.name
    if name == "digits":
        return _digits(data_config.image_size)
    if name == "synthetic":
        return _synthetic(tuple(data_config.synthetic_shape), data_config.synthetic_examples, seed)
    return _tfds(name, data_config.tfds_data_dir or None, data_config.image_size)


def _in_memory(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(len(labels), lambda idx: (images[idx], labels[idx]))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if not size or images.shape[1:3] == (size, size):
        return images
    import jax  # bilinear resize on the host CPU; only used when data.image_size asks for it
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        out = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")
    return np.asarray(out)


def _digits(image_size: int) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): real data, no download.

    Fixed stratified split: 1,437 train / 360 test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    images = (images - images.mean()) / images.std()
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels)
    x_train, x_test = _resize(x_train, image_size), _resize(x_test, image_size)
    return Dataset(_in_memory(x_train, y_train), _in_memory(x_test, y_test), 10, x_train.shape[1:])


def _synthetic(shape: tuple[int, int, int], n: int, seed: int) -> Dataset:
    """Random images and labels for benchmarks: measures the step, not the data."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, *shape), dtype=np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    split = _in_memory(images, labels)
    return Dataset(split, split, 10, shape)


def _tfds(name: str, data_dir: str | None, image_size: int) -> Dataset:
    import tensorflow_datasets as tfds
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # tfds warns about half-made folders; our one error line says it all
    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
        num_classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
    except Exception as e:  # tfds raises several types for "not there"; all mean the same to the user
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise ConfigError(
            f"tfds dataset {name!r} is not prepared in {where} ({type(e).__name__}); prepare it on a machine "
            f"with internet: tfds build {name} --file_format=array_record"
            f"{' --data_dir ' + data_dir if data_dir else ''}") from None
    finally:
        logging.set_verbosity(verbosity)
    mean, std = (np.asarray(s, np.float32) for s in _TFDS_STATS[name])

    def get(source, idx):
        examples = [source[int(i)] for i in idx]
        images = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0
        labels = np.asarray([e["label"] for e in examples], np.int32)
        return _resize((images - mean) / std, image_size), labels

    train, test = sources
    shape = get(train, [0])[0].shape[1:]
    return Dataset(Split(len(train), functools.partial(get, train)),
                   Split(len(test), functools.partial(get, test)), num_classes, shape)
