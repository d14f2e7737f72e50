"""`python -m jaxdist.data.prepare` as on a machine without internet, fed the test's files in the real formats.

    python tests/offline_prepare.py NAME [NAME ...] --data_dir=DIR --manual_dir=DIR

All of tfds' real build path runs (builder, download manager, manual dir lookup, archive extraction,
TensorFlow decoding, image encoding, ArrayRecord writing), with two changes the test needs:
- name resolution fails for every host but localhost, so nothing can be downloaded;
- the checksums tfds verifies the manual files against are those of the files in --manual_dir (tfds would
  rightly reject the test's files against the real datasets' checksums). A file that is not there keeps
  its real checksum, so tfds tries to download it, and fails offline.
"""
import os
import socket
import sys

from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for jaxdist

from jaxdist.data import prepare  # noqa: E402  (after the path is set)

_LOCAL = ("localhost", "127.0.0.1", "::1")


def _network_off() -> None:
    resolve = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in _LOCAL:
            raise socket.gaierror(f"name resolution of {host} is disabled: this test runs offline")
        return resolve(host, *args, **kwargs)
    socket.getaddrinfo = local_only


def _register_checksums_of_manual_files(names: list[str], manual_dir: str) -> None:
    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.core.download import checksums

    # All read before any is replaced: cifar100's builder subclasses cifar10's, fashion_mnist's mnist's.
    originals = {name: tfds.builder_cls(name).url_infos for name in names}
    for name, url_infos in originals.items():
        where = epath.Path(prepare._manual_dir_for(name, manual_dir))
        tfds.builder_cls(name).url_infos = {
            url: checksums.compute_url_info(where / info.filename) if (where / info.filename).exists() else info
            for url, info in url_infos.items()}


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    manual_dir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--manual_dir="))
    _network_off()
    _register_checksums_of_manual_files(names, manual_dir)
    app.run(prepare.main)
