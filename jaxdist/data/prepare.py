"""Build tfds datasets once, as ArrayRecord (random access), where jaxdist's configs then read them.

    pip install -e '.[prepare]'    # tfds builds datasets with TensorFlow; training never imports it
    python -m jaxdist.data.prepare cifar10 mnist [--data_dir=DIR] [--manual_dir=DIR]

Downloads come from each dataset's own URLs. A machine without internet takes them from --manual_dir
instead: the archives under their original file names, in DIR/NAME/ or DIR itself (a failed download
names the files). tfds verifies their checksums either way. Then train with
--config.data.tfds_data_dir=DIR (or $TFDS_DATA_DIR). CIFAR and MNIST need no preparing at all: jaxdist
reads their raw downloads directly (data.path; docs/data.md).
"""
import importlib.util
import logging
import os
import socket
import urllib.parse

from absl import app, flags

from jaxdist.cli import fail

_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir; default ~/tensorflow_datasets or $TFDS_DATA_DIR.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Read the downloads from here (DIR/NAME/ or DIR) instead of "
                                  "the internet.")
# What tfds needs to build (not to read) a dataset: TensorFlow decodes the downloads and encodes the images,
# and its download manager imports importlib_resources (tfds 4.9.10 declares it for Python < 3.9 only).
BUILD_MODULES = ("tensorflow", "importlib_resources")


class OfflineError(RuntimeError):
    """A download is needed but its host cannot be resolved: fail now, not after minutes of retries."""


def prepare(name: str, data_dir: str | None, manual_dir: str | None = None) -> str:
    """Builds `name` as ArrayRecord (a no-op if it is there already) and returns the data dir to train from."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        _check_downloads_reachable(name, manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=_manual_dir_for(name, manual_dir), try_download_gcs=False))
    return str(builder.data_dir_root)


def _manual_dir_for(name: str, manual_dir: str | None) -> str | None:
    if manual_dir and os.path.isdir(os.path.join(manual_dir, name)):
        return os.path.join(manual_dir, name)
    return manual_dir


def _check_downloads_reachable(name: str, manual_dir: str | None) -> None:
    """tfds retries a download whose host does not resolve for ~3 minutes (urllib3 backoff, 10 tries);
    a machine without internet learns it at once instead."""
    for file, url in _not_in_manual_dir(name, manual_dir):
        host = urllib.parse.urlparse(url).hostname
        try:
            socket.getaddrinfo(host, None)
        except OSError as e:
            raise OfflineError(f"cannot resolve {host} to download {file} ({e})") from None


def downloads(name: str) -> list[tuple[str, str]]:
    """(file name, URL) of each download tfds has checksums for."""
    import tensorflow_datasets as tfds

    infos = tfds.builder_cls(name).url_infos or {}
    return sorted((info.filename or url.rsplit("/", 1)[-1], url) for url, info in infos.items())


def _not_in_manual_dir(name: str, manual_dir: str | None) -> list[tuple[str, str]]:
    where = _manual_dir_for(name, manual_dir)
    return [(file, url) for file, url in downloads(name) if not (where and os.path.isfile(os.path.join(where, file)))]


def _offline_hint(name: str, manual_dir: str | None) -> str:
    missing = [f"{file} ({url})" for file, url in _not_in_manual_dir(name, manual_dir)]
    if not missing:
        return ""
    return f"; without internet, put {', '.join(missing)} in --manual_dir=DIR (or DIR/{name}/)"


def main(argv):
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings; a failed download is one line
    names = argv[1:]
    if not names:
        fail("usage: python -m jaxdist.data.prepare NAME [NAME ...] [--data_dir=DIR] [--manual_dir=DIR], "
             "e.g. cifar10")
    missing = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"building tfds datasets needs {' and '.join(missing)}, which training does not: "
             "pip install -e '.[prepare]' (or skip this step: CIFAR and MNIST downloads are read directly with "
             "data.path, docs/data.md)")
    if _MANUAL_DIR.value and not os.path.isdir(_MANUAL_DIR.value):
        fail(f"--manual_dir={_MANUAL_DIR.value!r} is not a directory")
    from jaxdist.data.sources import tfds_name_exists

    for name in names:
        if not tfds_name_exists(name):
            fail(f"unknown tfds dataset {name!r}; see https://www.tensorflow.org/datasets/catalog for names")
    for name in names:
        try:
            data_dir = prepare(name, _DATA_DIR.value, _MANUAL_DIR.value)
        except Exception as e:  # network, disk, checksum or manual-download problems: one line, not a traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            fail(f"could not prepare {name}: {type(e).__name__}: {first}{_offline_hint(name, _MANUAL_DIR.value)}")
        print(f"prepared {name} in {data_dir}; train with --config.data.name={name} "
              f"--config.data.tfds_data_dir={data_dir}", flush=True)


if __name__ == "__main__":
    app.run(main)
