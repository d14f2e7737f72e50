"""Command line: python -m jaxdist.main --config=configs/digits_dp.py --workdir=runs/digits [--mode=eval]

Kept short on purpose: the logic lives in train/loop.py, where it can be tested in pieces.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from jaxdist import distributed
from jaxdist.cli import check_config_file, fail, parse_flags, quiet_library_logs, validate
from jaxdist.errors import ConfigError
from jaxdist.train.preemption import EXIT_CODE, Preempted
from jaxdist.train.window import EXIT_CODE_NONFINITE, NonFiniteError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if the workdir has a "
                          "checkpoint) or eval (the latest checkpoint, or config.eval_step, on the test split).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0 "
                                   "(or $JAXDIST_COORDINATOR_ADDRESS). Unset: one process, or what JAX detects "
                                   "(SLURM, Open MPI, TPU pods).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many (or $JAXDIST_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this one's rank (or $JAXDIST_PROCESS_ID).")
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for the coordinator and the other "
                                "processes before giving up with an error.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    quiet_library_logs()
    check_config_file()
    config = _CONFIG.value
    try:
        validate(config)
        distributed.configure_devices(config)
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _TIMEOUT.value)
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
