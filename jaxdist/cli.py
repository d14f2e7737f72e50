"""Shared by the command-line entry points (main, bench): one-line user errors and quiet logs."""
import logging as std_logging
import os
import sys

from absl import flags, logging


def fail(message: str) -> None:
    """User mistakes end with one line and exit code 2, never a traceback."""
    print(f"jaxdist: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0].removesuffix("Traceback (most recent call last):"))
    except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such field"
        field = str(e).strip("\"'")
        fail(f"unknown config field {field!r} in the --config.* overrides; the config file lists the valid fields")


def quiet_library_logs() -> None:
    """Orbax logs every save at INFO and JAX logs each backend it probes; keep their warnings only."""
    chatty = ("/orbax/", "xla_bridge.py")
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or not any(c in record.pathname for c in chatty))


def check_config_file() -> None:
    """config_flags defers load errors until the value is read: check the file up front."""
    filename = flags.FLAGS["config"].config_filename
    if not os.path.isfile(filename):
        fail(f"config file {filename!r} does not exist; pass one of configs/*.py, e.g. --config=configs/digits_dp.py")
