"""Download and prepare a tfds dataset in the ArrayRecord format that jaxdist reads (random access).

    python -m jaxdist.data.prepare cifar10 [--data_dir=DIR]

Run it once on a machine with internet (or with the manual downloads tfds asks for, e.g. imagenet2012),
then point training at the same directory with --config.data.tfds_data_dir=DIR (or $TFDS_DATA_DIR).
"""
from absl import app, flags

from jaxdist.cli import fail

_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir; default ~/tensorflow_datasets or $TFDS_DATA_DIR.")


def prepare(name: str, data_dir: str | None) -> str:
    """Builds `name` as ArrayRecord and returns the directory it was written to."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def main(argv):
    if len(argv) != 2:
        fail("usage: python -m jaxdist.data.prepare NAME [--data_dir=DIR], e.g. NAME=cifar10")
    from jaxdist.data.sources import tfds_name_exists

    name = argv[1]
    if not tfds_name_exists(name):
        fail(f"unknown tfds dataset {name!r}; see https://www.tensorflow.org/datasets/catalog for names")
    try:
        print(f"prepared {name} in {prepare(name, _DATA_DIR.value)}")
    except Exception as e:  # network, disk or manual-download problems: one line, not a traceback
        fail(f"could not prepare {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


if __name__ == "__main__":
    app.run(main)
