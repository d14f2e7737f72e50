"""Writers for the datasets' real download formats, so readers and `prepare` are tested on real bytes.

Images are learnable on purpose (each class a distinct brightness pattern plus noise): training on them
must lower the loss, and a reader that mixes up pixels, channels or labels breaks that.
"""
import gzip
import io
import pickle
import struct
import tarfile

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine{i:02d}" for i in range(100)]
CIFAR100_COARSE = [f"coarse{i:02d}" for i in range(20)]


def class_images(labels: np.ndarray, shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """uint8 images whose mean level and one bright row depend on the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), *shape)).astype(np.int32)
    for i, label in enumerate(labels):
        images[i] += 120 * label // max(1, num_classes - 1)
        images[i, label % shape[0]] = 255
    return np.clip(images, 0, 255).astype(np.uint8)


def labelled(n: int, num_classes: int, shape, seed: int):
    labels = np.arange(n) % num_classes
    np.random.default_rng(seed).shuffle(labels)
    return class_images(labels, shape, num_classes, seed + 1), labels.astype(np.int64)


# --- CIFAR, python version (cifar-10-python.tar.gz, cifar-100-python.tar.gz), as torchvision and Keras keep it

class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the CIFAR files: byte strings, and str such as numpy's dtype code
    'u1' (a byte string in Python 2), as BINSTRING opcodes, where Python 3's protocol 2 would call
    _codecs.encode or write unicode; numpy arrays from numpy.core.multiarray."""

    def save_bytes(self, obj):
        header = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(obj))
        self.write(header + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("ascii"))

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def python2_pickle(value) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(value)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch_bytes(images: np.ndarray, labels_key: bytes, labels, extra: dict | None = None) -> bytes:
    """One pickled batch: bytes keys (the files were pickled by Python 2), data as N x 3072 channel planes."""
    batch = {b"batch_label": b"testing batch", labels_key: [int(y) for y in labels],
             b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072).copy(),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))], **(extra or {})}
    return python2_pickle(batch)


def cifar_python_files(name: str, train, test) -> dict[str, bytes]:
    """{file name: content} of cifar-10-batches-py/ or cifar-100-python/ for (images, labels) splits."""
    if name == "cifar10":
        (x, y), (tx, ty) = train, test
        files = {f"data_batch_{k + 1}": _batch_bytes(x[k::5], b"labels", y[k::5]) for k in range(5)}
        files["test_batch"] = _batch_bytes(tx, b"labels", ty)
        files["batches.meta"] = python2_pickle({b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                b"num_cases_per_batch": len(x) // 5, b"num_vis": 3072})
        files["readme.html"] = b"<html></html>"
        return files
    (x, y), (tx, ty) = train, test
    files = {split: _batch_bytes(images, b"fine_labels", labels, {b"coarse_labels": [int(v) // 5 for v in labels]})
             for split, (images, labels) in (("train", (x, y)), ("test", (tx, ty)))}
    files["meta"] = python2_pickle({b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                                    b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]})
    return files


CIFAR_PYTHON = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
                "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}


def write_cifar_python(root, name: str, train, test, layout: str = "folder"):
    """layout: 'folder' (root/cifar-10-batches-py/...), 'flat' (the files directly in root) or 'archive'
    (root/cifar-10-python.tar.gz). Returns the path to give as data.path."""
    folder, archive = CIFAR_PYTHON[name]
    files = cifar_python_files(name, train, test)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "archive":
        write_tar_gz(root / archive, {f"{folder}/{k}": v for k, v in files.items()})
        return root
    target = root / folder if layout == "folder" else root
    target.mkdir(exist_ok=True)
    for file, content in files.items():
        (target / file).write_bytes(content)
    return root


def write_tar_gz(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for member, content in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


# --- CIFAR, binary version (cifar-10-binary.tar.gz): what tfds' builders download

def write_cifar_binary_archive(path, name: str, train, test) -> None:
    def records(images, labels):
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        prefix = [[y] if name == "cifar10" else [y // 5, y] for y in labels]  # cifar100: coarse, fine
        return b"".join(bytes(p) + row.tobytes() for p, row in zip(prefix, planes))
    (x, y), (tx, ty) = train, test
    if name == "cifar10":
        files = {f"cifar-10-batches-bin/data_batch_{k + 1}.bin": records(x[k::5], y[k::5]) for k in range(5)}
        files["cifar-10-batches-bin/test_batch.bin"] = records(tx, ty)
        files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    else:
        files = {"cifar-100-binary/train.bin": records(x, y), "cifar-100-binary/test.bin": records(tx, ty),
                 "cifar-100-binary/fine_label_names.txt": "\n".join(CIFAR100_NAMES).encode(),
                 "cifar-100-binary/coarse_label_names.txt": "\n".join(CIFAR100_COARSE).encode()}
    write_tar_gz(path, files)


# --- MNIST / Fashion-MNIST IDX files

MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: magic (0, 0, 0x08 = unsigned byte, number of dims), big-endian uint32 dims, then the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(root, train, test, gz: bool = True):
    """The four IDX files in root (gzipped as downloaded, or not, as after gunzip). Returns root."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": train[0][..., 0], "train_labels": train[1],
              "test_images": test[0][..., 0], "test_labels": test[1]}
    for key, file in MNIST_FILES.items():
        content = idx_bytes(arrays[key])
        if gz:
            (root / f"{file}.gz").write_bytes(gzip.compress(content, compresslevel=1))
        else:
            (root / file).write_bytes(content)
    return root
