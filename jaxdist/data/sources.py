"""Datasets as random-access record sources plus the transforms that turn a record into model input.

Random access (not streams) is what makes the input exact: global batch k is a pure function of
(seed, k), so every process can read just its own rows of it, and resuming needs only the position.
A source maps an index to `(image HWC uint8 or float32 in [0, 1], label)`; sources are picklable so
Grain can hand them to worker processes.
"""
import dataclasses
import os

import numpy as np
from absl import logging

from jaxdist.data import digits
from jaxdist.data.transforms import ImageTransform
from jaxdist.errors import ConfigError

BUILTIN = ("digits", "synthetic", "folder", "ucr")
RAW = ("cifar10", "cifar100", "mnist", "fashion_mnist")  # tfds names also read from their raw download (data.path)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Per-channel mean and std of the training images, in [0, 1] units. Others are estimated (see _estimate_stats).
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": _IMAGENET,
    "imagenette": _IMAGENET,
    "synthetic": ((0.5,), (0.2887,)),  # uniform uint8 noise
}


@dataclasses.dataclass(frozen=True)
class Split:
    source: object  # len() and [i] -> (image, label)
    transform: ImageTransform

    @property
    def size(self) -> int:
        return len(self.source)

    @property
    def lengths(self) -> np.ndarray | None:
        """Valid time steps of each record, for sources of variable-length sequences padded at the end
        (batches then carry them as 'lengths'); None for fixed-size data."""
        return getattr(self.source, "lengths", None)


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]  # of the model input, after the transforms


def image_input(data: Dataset) -> dict | None:
    """How this dataset's test images become model input, for run.json (jaxdist.predict turns image files
    into the same input without the data): decoded size and channels, per-channel mean and std. None for
    sequence records (UCR series), which no image file holds."""
    record = data.test.source[0][0]
    if record.ndim != 3:
        return None
    transform = data.test.transform
    return {"height": int(record.shape[0]), "width": int(record.shape[1]), "channels": int(record.shape[2]),
            "mean": transform.mean.tolist(), "std": transform.std.tolist()}


class ArraySource:
    def __init__(self, images: np.ndarray, labels: np.ndarray, lengths: np.ndarray | None = None):
        self.images, self.labels, self.lengths = images, labels, lengths

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class TfdsSource:
    def __init__(self, data_source):
        self.data_source = data_source

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, i):
        example = self.data_source[int(i)]
        return example["image"], int(example["label"])


def load(data_config, num_classes: int = 10, seed: int = 0) -> Dataset:
    """The configured dataset. `num_classes` sizes the synthetic labels; real data brings its own."""
    _check_location_fields(data_config)
    name = data_config.name
    if name == "digits":
        train, test, names = _digits()
    elif name == "synthetic":
        train, test, names = _synthetic(tuple(data_config.synthetic_shape), data_config.synthetic_examples,
                                        num_classes, seed)
    elif name == "folder":
        from jaxdist.data import folder
        train, test, names = folder.load(data_config)
    elif name == "ucr":
        train, test, names = _ucr(data_config.ucr_name)
    elif data_config.path:  # a raw download (cifar10, cifar100, mnist, fashion_mnist), read directly
        from jaxdist.data import raw
        train, test, names = raw.load(name, data_config.path)
    else:
        train, test, names = _tfds(name, data_config.tfds_data_dir or None, data_config.image_size)
    try:
        mean, std = _STATS.get(name) or _estimate_stats(train)
    except OSError as e:  # a record the source cannot read (an image folder's file that fails to decode)
        raise ConfigError(f"{name}: {e}") from None
    if data_config.augment == "inception_crop" and not data_config.image_size:
        raise ConfigError("data.augment='inception_crop' needs data.image_size (the crop's output size), e.g. 224")
    splits = [Split(src, ImageTransform(data_config, mean, std, train=is_train))
              for src, is_train in ((train, True), (test, False))]
    if not data_config.image_size and train[0][0].shape != test[0][0].shape:
        raise ConfigError(f"{name}: train and test images differ in size ({train[0][0].shape} vs "
                          f"{test[0][0].shape}); set data.image_size so they can be batched")
    image_shape = splits[1].transform(test[0][0], None).shape
    return Dataset(splits[0], splits[1], len(names), tuple(names), tuple(image_shape))


def _check_location_fields(data_config) -> None:
    """A location the chosen source would not read is a mistake, not something to ignore silently."""
    name, raw_or_folder = data_config.name, ("folder", *RAW)
    if data_config.path and name not in raw_or_folder:
        raise ConfigError(f"data.path is read only for data.name in {', '.join(raw_or_folder)}, not {name!r}"
                          + ("; for a prepared tfds dataset set data.tfds_data_dir" if name not in BUILTIN else ""))
    if data_config.val_path and name != "folder":
        raise ConfigError(f"data.val_path is read only for data.name='folder', not {name!r}")
    if data_config.tfds_data_dir and (name in BUILTIN or data_config.path):
        what = f"data.name={name!r}" if name in BUILTIN else f"the raw {name} download in data.path"
        raise ConfigError(f"data.tfds_data_dir is not read for {what}; set data.path or data.tfds_data_dir, not both")


def _estimate_stats(source, n: int = 256):
    """Per-channel mean/std from a fixed sample of training images, for datasets without known stats
    (of padded sequences, the valid steps only)."""
    from jaxdist.data.transforms import to_unit_float

    lengths = getattr(source, "lengths", None)
    ids = np.random.default_rng(0).choice(len(source), min(n, len(source)), replace=False)
    pixels = np.concatenate([to_unit_float(source[i][0][:None if lengths is None else lengths[i]])
                             .reshape(-1, source[i][0].shape[-1]) for i in ids])
    return tuple(pixels.mean(0)), tuple(np.maximum(pixels.std(0), 1e-3))


def _digits():
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): real data, no download.

    Fixed stratified split: 1,437 train / 360 test (data/digits.py).
    """
    images, labels = digits.load()
    images = (images[..., None] / 16.0).astype(np.float32)
    labels = labels.astype(np.int32)
    train, test = digits.split(labels)
    return (ArraySource(images[train], labels[train]), ArraySource(images[test], labels[test]),
            [str(d) for d in range(10)])


def _synthetic(shape: tuple[int, int, int], n: int, num_classes: int, seed: int):
    """Random uint8 images and labels for benchmarks: measures the step and the transforms, not I/O."""
    rng = np.random.default_rng(seed)
    source = ArraySource(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                         rng.integers(0, num_classes, n).astype(np.int32))
    return source, source, [str(k) for k in range(num_classes)]


def ucr_names(root: str) -> list[str]:
    """The UCR/UEA classification sets in `root` (sktime's bundled data folder)."""
    return sorted(n for n in os.listdir(root) if _ucr_classes(os.path.join(root, n, f"{n}_TRAIN.ts")))


def _ucr_classes(path: str) -> list[str]:
    """Class names in the order the .ts header declares them (`@classLabel true A B ...`); [] if none."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if words[:2] and words[0].lower() == "@classlabel":
                return words[2:] if words[1].lower() == "true" else []
            if words[:1] and words[0].lower() == "@data":
                return []
    return []


def _ucr(name: str):
    """A UCR/UEA time-series classification set from the copies bundled in sktime's wheel: no download.

    A series of F variables and T steps becomes an "image" of shape (T, 1, F) (F channels, so each variable
    gets its own normalization; `data.view='rows'` makes it (T, F)). Series of different lengths
    (JapaneseVowels: 7..29 steps) are zero-padded at the end to the longest one, train and test alike,
    and the source carries each one's length, which batches pass on to the model as 'lengths'.
    """
    try:
        import sktime.datasets
        from sktime.datasets import load_from_tsfile
    except ImportError:
        raise ConfigError("data.name='ucr' needs sktime, which bundles the data sets: pip install -e '.[ucr]'") from None
    bundled = os.path.join(os.path.dirname(sktime.datasets.__file__), "data")
    names = ucr_names(bundled)
    if name not in names:
        raise ConfigError(f"unknown data.ucr_name {name!r}; bundled with sktime (offline): {', '.join(names)}")
    root = os.path.join(bundled, name)
    classes = _ucr_classes(os.path.join(root, f"{name}_TRAIN.ts"))
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("TRAIN", "TEST"):
        frame, y = load_from_tsfile(os.path.join(root, f"{name}_{split}.ts"), return_data_type="nested_univ")
        series = [np.stack([np.asarray(frame.iloc[i, j], np.float32) for j in range(frame.shape[1])], axis=-1)
                  for i in range(len(frame))]  # (T_i, F)
        splits.append((series, np.asarray([index[str(label)] for label in y], np.int32)))
    steps = max(len(x) for series, _ in splits for x in series)
    variable = any(len(x) < steps for series, _ in splits for x in series)
    sources = []
    for series, labels in splits:
        images = np.zeros((len(series), steps, 1, series[0].shape[-1]), np.float32)
        for i, x in enumerate(series):
            images[i, :len(x), 0] = np.nan_to_num(x)  # a few UCR series mark missing values as NaN
        lengths = np.asarray([len(x) for x in series], np.int32) if variable else None
        sources.append(ArraySource(images, labels, lengths))
    logging.info("ucr %s: %d classes, %d train / %d test series, up to %d steps of %d variables", name,
                 len(classes), len(sources[0]), len(sources[1]), steps, images.shape[-1])
    return sources[0], sources[1], classes


def tfds_name_exists(name: str) -> bool:
    """Offline check against tfds' registered builders (list_builders() would import TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(name)
        return True
    except tfds.core.registered.DatasetNotFoundError:
        return False


def _tfds(name: str, data_dir: str | None, image_size: int):
    import tensorflow_datasets as tfds

    if not tfds_name_exists(name):
        raise ConfigError(f"unknown data.name {name!r}; valid: {', '.join(BUILTIN)} or a tfds dataset name "
                          "with image and label features (e.g. cifar10, mnist, imagenette)")
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # tfds warns about half-made folders; our one error line says it all
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        eval_split = "test" if "test" in builder.info.splits else "validation"
        train, test = tfds.data_source(name, split=["train", eval_split], data_dir=data_dir, download=False)
    except Exception:  # tfds raises several types for "not there"; all mean the same to the user
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        or_raw = "; or read its raw download directly with data.path=DIR (docs/data.md)" if name in RAW else ""
        raise ConfigError(
            f"tfds dataset {name!r} is not prepared in {where}; prepare it once: pip install "
            f"-e '.[prepare]' && python -m jaxdist.data.prepare {name}{' --data_dir=' + data_dir if data_dir else ''}"
            f"{or_raw}") from None
    finally:
        logging.set_verbosity(verbosity)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ConfigError(f"tfds dataset {name!r} has features {sorted(features)}; jaxdist needs 'image' and 'label'")
    if None in features["image"].shape and not image_size:
        raise ConfigError(f"tfds dataset {name!r} has images of varying size; set data.image_size (e.g. 224)")
    return TfdsSource(train), TfdsSource(test), list(features["label"].names)
