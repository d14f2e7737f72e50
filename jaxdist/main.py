"""Command line: python -m jaxdist.main --config=configs/digits_dp.py --workdir=runs/digits [--mode=eval]

Kept short on purpose: the logic lives in train/loop.py, where it can be tested in pieces.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdist import distributed
from jaxdist.config import ConfigError, validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if the workdir has a "
                          "checkpoint) or eval (the latest checkpoint on the test split).")
flags.mark_flags_as_required(["config", "workdir"])


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
    import logging as std_logging
    chatty = ("/orbax/", "xla_bridge.py")
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or not any(c in record.pathname for c in chatty))


def main(argv):
    del argv
    quiet_library_logs()
    filename = flags.FLAGS["config"].config_filename  # config_flags defers load errors: check here
    if not os.path.isfile(filename):
        fail(f"config file {filename!r} does not exist; pass one of configs/*.py, e.g. --config=configs/digits_dp.py")
    config = _CONFIG.value
    try:
        validate(config)
        distributed.configure_devices(config)
        from jaxdist.train import loop  # after device setup: importing it must not start JAX's backends first

        run = loop.train_and_evaluate if _MODE.value == "train" else loop.evaluate_checkpoint
        result = run(config, _WORKDIR.value)
    except ConfigError as e:
        fail(str(e))
    logging.info("%s result: %s", _MODE.value, result)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
