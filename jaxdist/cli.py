"""Shared by the command-line entry points (main, bench, plan): config checks, one-line user errors, quiet logs."""
import logging as std_logging
import os
import sys

from absl import flags, logging

from jaxdist import config as config_lib
from jaxdist.data import transforms
from jaxdist.models import registry
from jaxdist.parallel import bn_groups, sync


def validate(config) -> None:
    """Every check that needs no devices: the config's own fields, then each part's section."""
    config_lib.validate(config)
    registry.validate(config)
    transforms.validate(config.data)
    sync.validate(config)
    bn_groups.validate(config)


def fail(message: str, code: int = 2, prefix: str = "jaxdist: error: ") -> None:
    """One line and an exit code, never a traceback: 2 = bad input (config, data, checkpoint),
    3 = non-finite loss, 75 = stopped by a signal after saving (rerun to resume)."""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0].removesuffix("Traceback (most recent call last):"))
    except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such field"
        field = str(e).strip("\"'")
        fail(f"unknown config field {field!r} in the --config.* overrides; the config file lists the valid fields")


def quiet_library_logs() -> None:
    """Orbax logs every save at INFO and JAX logs each backend it probes; keep their warnings only.

    Also drops one known-harmless report: after a failed checkpoint read, TensorStore's callback threads
    still post to Orbax's finished asyncio loop ("Event loop is closed"), which Python reports as an
    unraisable exception with a traceback next to jaxdist's one-line error.
    """
    chatty = ("/orbax/", "xla_bridge.py")
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or not any(c in record.pathname for c in chatty))

    def unraisable(report):
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"):
            sys.__unraisablehook__(report)
    sys.unraisablehook = unraisable


def check_config_file() -> None:
    """config_flags defers load errors until the value is read: check the file up front."""
    filename = flags.FLAGS["config"].config_filename
    if not os.path.isfile(filename):
        fail(f"config file {filename!r} does not exist; pass one of configs/*.py, e.g. --config=configs/digits_dp.py")
