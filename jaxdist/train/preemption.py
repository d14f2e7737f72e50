"""Stop requests (SIGTERM from a scheduler, SIGINT from Ctrl-C) turned into "save after this step".

One process: the signal handler sets a flag the loop reads after each step. Several processes: they
must all save at the same step, so SIGTERM is left to JAX's preemption sync manager (installed by
`jax.distributed.initialize`), which Orbax's `reached_preemption(step)` consults to agree on a step,
and a Ctrl-C on any process is shared with the others at the next log point. A second signal ends the
process at once, keeping the latest complete checkpoint (Orbax renames a step's directory into place
only once it is whole).

Outside the train loop (setup, compiling, the last save) there is no step to finish: `exit_on_signal`
ends the process at once with the same exit code. It must act while the main thread is inside XLA's
compiler, where Python runs no signal handler, so a watcher thread reads the signal from the wakeup fd
that CPython's C-level handler writes to.
"""
import os
import signal
import socket
import sys
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


def _exit_now(message: str) -> None:
    """One line and exit 75 from any thread, without unwinding (which would wait on XLA or Orbax). Exits also when
    the line cannot be written (a stderr whose reader died): else the signal watcher's thread would die and
    every later signal be ignored."""
    try:
        sys.stderr.write(f"jaxdist: {message}; rerun the same command to resume (exit code {EXIT_CODE})\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_CODE)


class _Watcher:
    """Installed once per process by `exit_on_signal`; `paused` while a StopRequests handles signals."""
    paused = False
    sockets = ()  # kept open for the process's life: CPython writes the signal numbers to one of them


def exit_on_signal() -> None:
    """From process start: SIGINT or SIGTERM ends the process at once, exit 75, with one line, except
    while the train loop's StopRequests is in charge. Main thread only (CPython's rule for handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    _Watcher.sockets = (receiver, sender)
    signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)  # the C-level handler writes to the wakeup fd

    def watch():
        while True:
            signum = receiver.recv(1)[0]
            if not _Watcher.paused:
                _exit_now(f"stopped by {signal.Signals(signum).name} outside the train steps (setup, compiling or "
                          "the last save); the latest complete checkpoint is kept")
    threading.Thread(target=watch, name="jaxdist-signals", daemon=True).start()


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
        if self._signal is not None:  # a second signal: stop now
            _exit_now(f"stopped by a second {signal.Signals(signum).name} before the step could finish; the "
                      "latest complete checkpoint is kept")
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
        _Watcher.paused = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():  # the handlers from before this run
            signal.signal(sig, handler)
        _Watcher.paused = False
