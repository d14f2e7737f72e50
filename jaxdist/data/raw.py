"""CIFAR and MNIST read straight from the files users already downloaded with torchvision or Keras.

    data.name=cifar10|cifar100     data.path=DIR  DIR holds cifar-10-batches-py/ (cifar-100-python/), is
                                                  that folder, or holds or is cifar-10-python.tar.gz
    data.name=mnist|fashion_mnist  data.path=DIR  DIR holds the four IDX files, gzipped or not (also
                                                  torchvision's DIR/MNIST/raw, or Keras' mnist.npz)

No conversion step and no TensorFlow: the splits load into memory as uint8 HWC arrays (CIFAR-10 is 180 MB,
MNIST 55 MB) and go through the same pipeline as every other source. Every way a directory can be wrong
(missing, partial, truncated or foreign files) is one ConfigError naming the file and what was expected.
"""
import gzip
import io
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np

from jaxdist.data.sources import ArraySource  # raw is imported lazily by sources.load
from jaxdist.errors import ConfigError

_FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


def load(name: str, path: str):
    """(train source, test source, class names) of the raw download of `name` at `path`."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ConfigError(f"data.path {path!r} does not exist; for data.name={name!r} it must be {_WHAT[name]}")
    return (_cifar if name.startswith("cifar") else _mnist)(name, path)


# --- CIFAR, python version: pickled dicts of N x 3072 uint8 rows (R, G, B planes of 32 x 32), bytes keys.

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", meta="batches.meta",
                    train=tuple(f"data_batch_{k}" for k in range(1, 6)), test=("test_batch",),
                    names=b"label_names", labels=b"labels"),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", meta="meta",
                     train=("train",), test=("test",), names=b"fine_label_names", labels=b"fine_labels"),
}
_WHAT = {
    "cifar10": "the CIFAR-10 python version: a folder holding cifar-10-batches-py/, that folder itself, "
               "or cifar-10-python.tar.gz",
    "cifar100": "the CIFAR-100 python version: a folder holding cifar-100-python/, that folder itself, "
                "or cifar-100-python.tar.gz",
    "mnist": "a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
             "t10k-labels-idx1-ubyte (each may end in .gz), or mnist.npz",
    "fashion_mnist": "a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                     "and t10k-labels-idx1-ubyte (each may end in .gz)",
}


class _NumpyArraysOnly(pickle.Unpickler):
    """The CIFAR pickles hold dicts, lists, bytes and numpy arrays; refuse anything else, so a wrong file
    given as data.path cannot run code while it is read. (_codecs.encode is how Python 3 re-pickles bytes.)"""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _unpickle(content: bytes, where: str) -> dict:
    try:
        value = _NumpyArraysOnly(io.BytesIO(content), encoding="bytes").load()
    except Exception as e:  # truncated or foreign files raise many types; all mean "not a CIFAR batch"
        raise ConfigError(f"{where} is not a readable CIFAR python batch ({type(e).__name__}: {e}); "
                          "download it again") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} holds a {type(value).__name__}, not a CIFAR batch dict; download it again")
    return value


def _cifar_files(name: str, path: str) -> tuple[dict[str, bytes], str]:
    """The needed files' contents, from an extracted folder or the .tar.gz, and where they came from."""
    layout = _CIFAR[name]
    needed = [layout["meta"], *layout["train"], *layout["test"]]
    if os.path.isdir(path):
        for folder in (os.path.join(path, layout["folder"]), path):
            if any(os.path.isfile(os.path.join(folder, f)) for f in needed):
                missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
                if missing:
                    raise ConfigError(f"{folder} lacks {', '.join(missing)} of the {name} python version "
                                      f"({', '.join(needed)}); download it again")
                return {f: _read(os.path.join(folder, f)) for f in needed}, folder
        archive = os.path.join(path, layout["archive"])
        if not os.path.isfile(archive):
            raise ConfigError(f"data.path {path!r} holds no {name} files; it must be {_WHAT[name]}")
        path = archive
    return _from_archive(path, layout["folder"], needed, name), path


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _from_archive(path: str, folder: str, needed: list[str], name: str) -> dict[str, bytes]:
    members = {f"{folder}/{f}": f for f in needed}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in members and member.isfile():
                    found[members[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path} is not a readable .tar.gz ({type(e).__name__}: {e}); download it again") from None
    missing = [f for f in needed if f not in found]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(f'{folder}/{f}' for f in missing)}; it must be {_WHAT[name]}")
    return found


def _cifar(name: str, path: str):
    layout = _CIFAR[name]
    files, where = _cifar_files(name, path)
    meta = _unpickle(files[layout["meta"]], f"{where}: {layout['meta']}")
    if layout["names"] not in meta:
        raise ConfigError(f"{where}: {layout['meta']} has no {layout['names'].decode()}; download it again")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout["names"]]]
    splits = []
    for files_of_split in (layout["train"], layout["test"]):
        images, labels = [], []
        for file in files_of_split:
            batch = _unpickle(files[file], f"{where}: {file}")
            x, y = batch.get(b"data"), batch.get(layout["labels"])
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
                    or y is None or len(y) != len(x):
                raise ConfigError(f"{where}: {file} is not a CIFAR batch (expected uint8 'data' of N x 3072 and N "
                                  f"'{layout['labels'].decode()}'); download it again")
            labels.append(_check_labels(np.asarray(y, np.int64), len(names), f"{where}: {file}"))
            images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        splits.append(ArraySource(np.concatenate(images), np.concatenate(labels).astype(np.int32)))
    return splits[0], splits[1], names


# --- MNIST and Fashion-MNIST: IDX files (big-endian header, then uint8 data)

_IDX = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _mnist(name: str, path: str):
    names = [str(d) for d in range(10)] if name == "mnist" else _FASHION_NAMES
    keras = os.path.join(path, "mnist.npz")
    if name == "mnist" and os.path.isfile(keras):
        return (*_keras_npz(keras, len(names)), names)
    folder = next((d for d in (path, os.path.join(path, _TORCHVISION_FOLDER[name], "raw"))
                   if any(_idx_path(d, f) for f in _IDX.values())), None)
    if folder is None:
        raise ConfigError(f"data.path {path!r} holds no {name} IDX files; it must be {_WHAT[name]}")
    missing = [f for f in _IDX.values() if not _idx_path(folder, f)]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)} (.gz or not) of {name}; it must hold all four")
    arrays = {key: _read_idx(_idx_path(folder, file), ndim=3 if key.endswith("images") else 1)
              for key, file in _IDX.items()}
    splits = [_checked(arrays[f"{split}_images"][..., None], arrays[f"{split}_labels"], len(names),
                       _idx_path(folder, _IDX[f"{split}_labels"])) for split in ("train", "test")]
    return splits[0], splits[1], names


def _idx_path(folder: str, file: str) -> str | None:
    for candidate in (os.path.join(folder, file), os.path.join(folder, file + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_idx(path: str, ndim: int) -> np.ndarray:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                content = f.read()
        else:
            content = _read(path)
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path} is truncated or not gzip ({type(e).__name__}: {e}); download it again") from None
    header = 4 + 4 * ndim
    if len(content) < header or content[:4] != bytes([0, 0, 8, ndim]):
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                          f"(its first bytes are {content[:4].hex() or 'missing'}, expected 000008{ndim:02x})")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    expected = header + int(np.prod(dims))
    if len(content) != expected:
        raise ConfigError(f"{path} has {len(content)} bytes but its header (shape {dims}) needs {expected}: "
                          "truncated or corrupt; download it again")
    return np.frombuffer(content, np.uint8, offset=header).reshape(dims)


def _keras_npz(path: str, num_classes: int):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except Exception as e:  # zip, key and format errors: all mean "not Keras' mnist.npz"
        raise ConfigError(f"{path} is not Keras' mnist.npz ({type(e).__name__}: {e}); download it again") from None
    return tuple(_checked(arrays[f"x_{s}"].astype(np.uint8)[..., None], arrays[f"y_{s}"], num_classes, path)
                 for s in ("train", "test"))


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ConfigError(f"{where}: labels range over [{labels.min()}, {labels.max()}] but there are "
                          f"{num_classes} classes; download it again")
    return labels


def _checked(images: np.ndarray, labels: np.ndarray, num_classes: int, where: str) -> ArraySource:
    if len(images) != len(labels):
        raise ConfigError(f"{where}: {len(images)} images but {len(labels)} labels; download it again")
    _check_labels(labels, num_classes, where)
    return ArraySource(np.ascontiguousarray(images), labels.astype(np.int32))
