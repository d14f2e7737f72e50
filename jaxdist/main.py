"""Command line: python -m jaxdist.main --config=configs/digits_dp.py --workdir=runs/digits [--mode=eval]

Kept short on purpose: the logic lives in train/loop.py, where it can be tested in pieces.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from jaxdist.cli import fail, parse_flags, start
from jaxdist.errors import ConfigError
from jaxdist.train.preemption import EXIT_CODE, Preempted
from jaxdist.train.window import EXIT_CODE_NONFINITE, NonFiniteError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if the workdir has a "
                          "checkpoint) or eval (the latest checkpoint, or config.eval_step, on the test split).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    try:
        config = start(_CONFIG)
        from jaxdist.train import loop  # after device setup: importing it must not start JAX's backends first

        run = loop.train_and_evaluate if _MODE.value == "train" else loop.evaluate_checkpoint
        result = run(config, _WORKDIR.value)
    except ConfigError as e:
        fail(str(e))
    except NonFiniteError as e:
        fail(str(e), EXIT_CODE_NONFINITE)
    except Preempted as e:
        fail(str(e), EXIT_CODE, prefix="jaxdist: ")
    logging.info("%s result: %s", _MODE.value, result)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
