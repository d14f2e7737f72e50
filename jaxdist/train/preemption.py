"""Stop requests (SIGTERM from a scheduler, SIGINT from Ctrl-C) turned into "save after this step".

One process: the signal handler sets a flag the loop reads after each step. Several processes: they
must all save at the same step, so SIGTERM is left to JAX's preemption sync manager (installed by
`jax.distributed.initialize`), which Orbax's `reached_preemption(step)` consults to agree on a step,
and a Ctrl-C on any process is shared with the others at the next log point. A second SIGINT
interrupts at once, as usual.
"""
import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; a rerun with the same workdir resumes from the saved step


class Preempted(Exception):
    def __init__(self, step: int, directory: str):
        super().__init__(f"stopped by a signal after step {step}; checkpoint saved in {directory}; "
                         f"rerun the same command to resume (exit code {EXIT_CODE})")


class StopRequests:
    def __init__(self):
        self._signal = None
        self._multiprocess = jax.process_count() > 1
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread (e.g. not in some tests)
        signals = [signal.SIGINT] if self._multiprocess else [signal.SIGINT, signal.SIGTERM]
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self._signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._signal = signum
        logging.warning("received %s: finishing the current step, then saving a checkpoint",
                        signal.Signals(signum).name)

    def requested(self, step: int, checkpointer, sync_point: bool) -> bool:
        """True when this step should be the last. `sync_point`: a step where all processes check in."""
        if not self._multiprocess:
            return self._signal is not None
        if checkpointer.reached_preemption(step):
            return True
        if not sync_point:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self._signal is not None))
        return bool(np.any(flags))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():  # the handlers from before this run
            signal.signal(sig, handler)
