"""Train, or evaluate a checkpoint: python -m jaxdist.main --config=configs/digits_dp.py --workdir=runs/digits

--config=FILE[:ARG] is an ml_collections config file (configs/*.py). Override any field with
--config.a.b=VALUE, e.g. --config.mesh.model=2 --config.optimizer.lr=0.05; every field, its default and
meaning is in jaxdist/config.py (base_config). --print_config prints the resolved config and exits.
Rerunning with the same --workdir resumes from its latest checkpoint.

Exit codes: 0 done; 2 bad input, one line naming it (config, data, checkpoint, workdir, machine too
small); 3 a non-finite loss or model; 4 a checkpoint or the metrics could not be written; 6 reading the data failed
mid-run; 7 the step watchdog (no progress within watchdog.timeout_s); 75 stopped by a signal (rerun the
same command to resume). --verbosity=1 shows the library logs jaxdist hides.
"""
if __name__ == "__main__":  # first: a restart with malloc's huge pages (jaxdist/host_memory.py) costs ~50 ms
    from jaxdist import host_memory
    host_memory.restart_with_huge_pages()

import time

STARTED = time.monotonic()  # before the imports: goodput.json's wall time starts here

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdist.cli import fail, parse_flags, start  # noqa: E402
from jaxdist.config import check_local_path  # noqa: E402
from jaxdist.errors import (EXIT_CODE_CHECKPOINT_WRITE, EXIT_CODE_INPUT, CheckpointWriteError, ConfigError,  # noqa: E402
                            InputError)
from jaxdist.train.preemption import EXIT_CODE, Preempted, exit_on_signal  # noqa: E402
from jaxdist.train.watchdog import WatchdogError  # noqa: E402
from jaxdist.train.window import EXIT_CODE_NONFINITE, NonFiniteError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]); "
                                          "override fields with --config.a.b=value (jaxdist/config.py lists them).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if the workdir has a "
                          "checkpoint) or eval (the latest checkpoint, or config.eval_step, on the test split).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the config as it would run (file, overrides, "
                                  "checked) and exit; needs no --workdir.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    exit_on_signal()
    try:
        if _WORKDIR.value:  # before any device setup: a URL cannot be a workdir
            check_local_path("--workdir", _WORKDIR.value)
        config = start(_CONFIG)
        if _PRINT_CONFIG.value:
            print(config, end="")
            return
        if not _WORKDIR.value:
            raise ConfigError("--workdir is required: the directory for this run's checkpoints and metrics")
        from jaxdist.train import loop  # after device setup: importing it must not start JAX's backends first

        if _MODE.value == "train":
            result = loop.train_and_evaluate(config, _WORKDIR.value, STARTED)
        else:
            result = loop.evaluate_checkpoint(config, _WORKDIR.value)
    except ConfigError as e:
        fail(str(e))
    except NonFiniteError as e:
        fail(str(e), EXIT_CODE_NONFINITE)
    except Preempted as e:
        fail(str(e), EXIT_CODE, prefix="jaxdist: ")
    except CheckpointWriteError as e:
        fail(str(e), EXIT_CODE_CHECKPOINT_WRITE)
    except InputError as e:
        fail(f"{e}; the latest complete checkpoint is kept: fix the data and rerun to resume", EXIT_CODE_INPUT)
    except WatchdogError as e:
        fail(f"{e}; the latest complete checkpoint is kept: rerun to resume", 1)
    logging.info("%s result: %s", _MODE.value, result)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
