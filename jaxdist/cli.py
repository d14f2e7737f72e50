"""Shared by the command-line entry points (main, bench, plan, predict): the entry sequence, config checks, one-line
user errors, quiet logs."""
import logging as std_logging
import os
import sys

from absl import flags, logging


def _verbosity(argv: list[str]) -> int:
    """absl's --verbosity (-v) as typed, readable before absl parses flags."""
    values = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in ("--verbosity", "-v", "--v") and "=" in a]
    return int(values[-1]) if values and values[-1].lstrip("-").isdigit() else 0


# XLA's C++ warnings (GSPMD's deprecation notice, quiet_library_logs): their level is read once, when jaxlib
# loads, so it is set before the imports below import jax.
if _verbosity(sys.argv) < 1:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxdist import config as config_lib
from jaxdist import config_file, distributed, host_memory
from jaxdist.errors import ConfigError
from jaxdist.data import transforms
from jaxdist.models import registry
from jaxdist.parallel import bn_groups, sync


_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0 "
                                   "(or $JAXDIST_COORDINATOR_ADDRESS). Unset: one process, or what JAX detects "
                                   "(SLURM, Open MPI, TPU pods).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many (or $JAXDIST_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this one's rank (or $JAXDIST_PROCESS_ID).")
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for the coordinator and the other "
                                "processes before giving up with an error.")


def start(config_flag):
    """The entry sequence of every command that trains or times a step (main, bench), before JAX starts a
    backend: quiet library logs, the config file (exists, loads, every section valid), the simulated
    device count, then joining a multi-process run. Returns the config; raises ConfigError."""
    quiet_library_logs()
    config = config_flag.value  # the file loads: parse_flags checked it (config_file.py)
    validate(config)
    join(config.cpu_devices)
    return config


def join(cpu_devices: int) -> None:
    """The devices (`cpu_devices` simulated CPU devices, 0: JAX's default), then the multi-process run the
    flags or the environment name, if any. Before anything starts a JAX backend (or its threads)."""
    host_memory.setting()  # an unknown JAXDIST_MALLOC is an error here; the restart skipped it
    distributed.configure_devices(cpu_devices)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _TIMEOUT.value)


def validate(config) -> None:
    """Every check that needs no devices: the config's own fields, then each part's section."""
    config_lib.validate(config)
    registry.validate(config)
    transforms.validate(config.data)
    sync.validate(config)
    bn_groups.validate(config)


def fail(message: str, code: int = 2, prefix: str = "jaxdist: error: ") -> None:
    """One line and an exit code, never a traceback: 2 = bad input (config, data, checkpoint),
    3 = non-finite loss, 4 = a checkpoint or metrics write failed, 75 = stopped by a signal after saving (rerun to resume)."""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv):
    """absl's flag parsing, after checking the config file and the override paths (config_file.py), so
    that each mistake is one line."""
    try:
        config = config_file.check(argv) if "config" in flags.FLAGS else None
    except ConfigError as e:
        fail(str(e))
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(config_file.explain(str(e).splitlines()[0].removesuffix("Traceback (most recent call last):"), config))
    except SystemExit as e:
        # absl exits 1 after printing the help a user asked for; argparse, torchrun and pip exit 0, and
        # scripts read 1 as a failure.
        if e.code == 1 and any(arg.split("=", 1)[0] in _HELP for arg in argv[1:]):
            sys.exit(0)
        raise


_HELP = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml")  # absl's help flags (absl/app.py)


def quiet_library_logs() -> None:
    """Hide the library logs that tell a user nothing: Orbax's (a line per save; its failures become
    jaxdist's own one-line errors) and JAX's backend probing (the libtpu line on a CPU host). XLA's C++
    warnings (GSPMD's deprecation notice, once per compiled program: docs/parallelism.md says why GSPMD)
    are hidden at import, above. `--verbosity=1` shows them all.

    Also drops one known-harmless report: after a failed checkpoint read, TensorStore's callback threads
    still post to Orbax's finished asyncio loop ("Event loop is closed"), which Python reports as an
    unraisable exception with a traceback next to jaxdist's one-line error.
    """
    if flags.FLAGS.verbosity < 1:
        logging.get_absl_handler().addFilter(
            lambda record: "/orbax/" not in record.pathname  # every Orbax failure becomes jaxdist's own one line
            and (record.levelno >= std_logging.WARNING or "xla_bridge.py" not in record.pathname)
            and "libtpu" not in record.getMessage())

    def unraisable(report):
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"):
            sys.__unraisablehook__(report)
    sys.unraisablehook = unraisable

