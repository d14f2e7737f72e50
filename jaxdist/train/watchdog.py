"""The step watchdog: a run that stops making progress ends with a report, instead of hanging for days.

The train loop beats after every step it dispatches, every eval batch and every save. A thread checks
the time since the last beat; past the limit it prints every thread's Python stack, the phase and step
this process is in, and, with several processes, which rank stopped advancing: each process publishes
its progress in JAX's distributed key-value store every few seconds, and the rank behind the others is
the one that stalled (the others wait for it in a collective). The first process to fire also raises a
flag there, so that every process reports and exits together, before a dead peer turns their pending
collectives into unrelated errors. Each then leaves the coordination service through its shutdown barrier,
so that no process sees a peer vanish (a process whose coordinator disappears aborts instead of exiting 7),
and ends with exit code 7, without unwinding (a stalled collective would never return).

The limit is `watchdog.timeout_s`, or by default `watchdog.factor` times the median interval between
the recent train beats, never below `watchdog.floor_s`, so the first steps, a long eval or a save do not
trip it. For tests of the watchdog itself, JAXDIST_INJECT_STALL=RANK:STEP makes that rank sleep instead
of running that step.
"""
import collections
import contextlib
import faulthandler
import os
import statistics
import sys
import threading
import time

import jax
from absl import logging

EXIT_CODE = 7
_KEY = "jaxdist/watchdog/progress/"
_FIRED = "jaxdist/watchdog/fired"
_PUBLISH_EVERY_S = 2.0
_LEAVE_S = 15.0  # after firing, for the others to see the flag, report, and meet at the shutdown barrier
_READ_S = 5.0  # for the published progress: a best-effort read


class WatchdogError(RuntimeError):
    """The watchdog's own thread failed: raised at the loop's next beat, so the run stops instead of going on
    unwatched."""


class Watchdog:
    def __init__(self, config):
        w = config.watchdog
        self._timeout_s, self._floor_s, self._factor = w.timeout_s, w.floor_s, w.factor
        self._rank, self._processes = jax.process_index(), jax.process_count()
        self._intervals = collections.deque(maxlen=64)  # seconds between train beats
        self._last = (time.monotonic(), "start", 0)
        self._published, self._published_at = None, 0.0
        self._stall_at = _injected_stall()
        self._error = None  # what ended the watchdog's thread, for the next beat to raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="jaxdist-watchdog", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def inject_stall(self, step: int) -> None:
        """JAXDIST_INJECT_STALL=RANK:STEP: that rank sleeps instead of running that step (tests of the watchdog)."""
        while step == self._stall_at:
            time.sleep(60)

    def beat(self, phase: str, step: int) -> None:
        """Progress: `phase` ('train', 'eval', 'checkpoint') at step `step`. Raises WatchdogError if the
        watchdog's thread failed."""
        if self._error is not None:
            raise WatchdogError(f"the step watchdog's thread failed ({type(self._error).__name__}: {self._error}); "
                                "the run stopped rather than go on unwatched") from self._error
        now = time.monotonic()
        last_time, last_phase, _ = self._last
        if phase == "train" and last_phase == "train":
            self._intervals.append(now - last_time)
        self._last = (now, phase, step)

    def limit_s(self) -> float:
        if self._timeout_s:
            return self._timeout_s
        recent = statistics.median(self._intervals) if len(self._intervals) >= 8 else 0.0
        return max(self._floor_s, self._factor * recent)

    def _watch(self) -> None:
        """Checks the beats every second. An unexpected error ends it with a warning, and the next beat raises it."""
        try:
            while not self._stop.wait(1.0):
                idle = time.monotonic() - self._last[0]
                if self._processes > 1:
                    self._publish()
                    fired_by = _try(lambda: _client().key_value_try_get(_FIRED))
                    if fired_by is not None:
                        self._fire(idle, f"rank {fired_by}'s watchdog fired")
                if idle > self.limit_s():
                    self._fire(idle)
        except Exception as e:
            self._error = e
            logging.warning("the step watchdog is off, its thread failed: %s: %s; the run stops at its next step",
                            type(e).__name__, e)

    def _publish(self) -> None:
        _, phase, step = self._last
        if self._published == (phase, step) or time.monotonic() - self._published_at < _PUBLISH_EVERY_S:
            return
        _try(lambda: _client().key_value_set(f"{_KEY}{self._rank}", f"{step} {phase}", allow_overwrite=True))
        self._published, self._published_at = (phase, step), time.monotonic()

    def _fire(self, idle: float, cause: str = "") -> None:
        """Reports and exits; exits also if the report fails (a stderr whose reader died): a stalled run must end."""
        try:
            _, phase, step = self._last
            if self._processes > 1 and not cause:
                _try(lambda: _client().key_value_set(_FIRED, str(self._rank), allow_overwrite=True))
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            where = f"in {phase} after step {step}" if phase != "start" else "before the first step"
            why = cause or f"no progress for {idle:.1f}s (limit {self.limit_s():.1f}s, watchdog.timeout_s)"
            sys.stderr.write(f"jaxdist: error: watchdog: rank {self._rank} stopped {where}: {why}; {self._stalled()}; "
                             f"the stacks of its threads are above (exit code {EXIT_CODE})\n")
            sys.stderr.flush()
            if self._processes > 1:
                _within(_LEAVE_S, jax.distributed.shutdown)
        finally:
            os._exit(EXIT_CODE)

    def _stalled(self) -> str:
        """Which rank is behind, from the progress every process published (best effort: a few seconds)."""
        if self._processes == 1:
            return "one process: the stall is in this one"
        found = {}
        for key, value in _within(_READ_S, lambda: _client().key_value_dir_get(_KEY)) or []:
            with contextlib.suppress(ValueError, IndexError):  # unreadable: that rank's progress is unknown
                found[int(key.rsplit("/", 1)[1])] = int(value.split()[0])
        if len(found) < self._processes:
            silent = sorted(set(range(self._processes)) - set(found))
            return (f"rank(s) {', '.join(map(str, silent))} published no readable progress (stalled before the loop, "
                    "or gone)")
        behind = min(found.values())
        ahead = max(found.values())
        if behind == ahead:
            return f"every rank reached step {behind}: they wait together (a collective, the device or the input)"
        stalled = sorted(r for r, s in found.items() if s == behind)
        return (f"stalled: rank {', '.join(map(str, stalled))} at step {behind}, while the others reached step "
                f"{ahead} and wait for it")


def _try(call):
    """`call()`, or None if the coordination service cannot answer (a key not set yet, a coordinator gone)."""
    try:
        return call()
    except Exception:
        return None


def _within(seconds: float, call):
    """`call()` on a daemon thread: its result, or None if it fails or takes longer than `seconds` (a coordinator
    that is gone or a peer that never arrives must not keep a stalled run from ending)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(_try(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def _client():
    from jax._src import distributed  # JAX's coordination service client: no public handle in jax 0.10
    return distributed.global_state.client


def _injected_stall() -> int | None:
    """The step JAXDIST_INJECT_STALL=RANK:STEP stalls on this rank, if any (read once per run)."""
    rank, _, step = os.environ.get("JAXDIST_INJECT_STALL", "").partition(":")
    return int(step) if rank == str(jax.process_index()) and step.isdigit() else None
