"""Where a run's wall time goes, across its restarts: `workdir/goodput.json` and one summary line.

Each attempt (one process lifetime on the workdir) splits its wall time, from the start of
`python -m jaxdist.main` to the last write, into:

- init: start-up, data, the experiment, the initial state (initialised or restored from a checkpoint),
  opening the checkpoint manager and the metrics files;
- compile: the train and eval steps and the parallel report;
- data_wait: the loop waiting for its next batch;
- eval, checkpoint (time a save or the end of a save blocked the loop), log (metrics, curves.png);
- step: the rest of the train loop, dispatching steps and waiting for them (the loop's own time less the
  four above);
- unaccounted: the wall time none of these timed (teardown, gaps between phases); small by construction,
  and reported so that a phase that goes untimed shows.

A restart recomputes the steps between the checkpoint it resumes from and the step the previous attempt
had reached: their share of that attempt's step and data time is `lost_to_restarts`, moved out of its
`step` and `data_wait` so that the totals still add up to the total wall time. The file is rewritten at
every log point and at the end, so an attempt killed without warning keeps its last figures.
"""
import contextlib
import json
import os
import time

from absl import logging

CATEGORIES = ("init", "compile", "data_wait", "step", "eval", "checkpoint", "log")
FILE = "goodput.json"


class Goodput:
    def __init__(self, workdir: str, started: float, enabled: bool):
        """`started`: time.monotonic() at process start (jaxdist.main); `enabled`: process 0 writes."""
        self._path, self._started, self._enabled = os.path.join(workdir, FILE), started, enabled
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.first_step = self.reached_step = 0
        self.lost = {"steps": 0, "seconds": 0.0}
        self._earlier = _read(self._path) if enabled else []
        self._loop = None  # (start, seconds timed inside the loop by then) while the loop runs

    @contextlib.contextmanager
    def timing(self, category: str):
        t = time.monotonic()
        try:
            yield
        finally:
            self.seconds[category] += time.monotonic() - t

    def mark(self, category: str) -> None:
        """Everything since process start not yet timed is `category` (init, at the end of start-up)."""
        self.seconds[category] += max(0.0, self._elapsed() - sum(self.seconds.values()))

    def resumed(self, step: int) -> None:
        """This attempt starts after checkpoint `step`: the previous attempt's steps beyond it are lost."""
        self.first_step = self.reached_step = step
        if not self._earlier:
            return
        previous = self._earlier[-1]
        ran, lost = previous["reached_step"] - previous["first_step"], max(0, previous["reached_step"] - step)
        if ran > 0 and lost:
            busy = previous["seconds"]["step"] + previous["seconds"]["data_wait"]
            self.lost = {"steps": lost, "seconds": busy * min(1.0, lost / ran)}

    def loop_started(self) -> None:
        """The train loop begins: what was not timed since start-up (opening the checkpoint manager and the
        metrics files) is init too."""
        self.mark("init")
        self._loop = (time.monotonic(), self._inside())

    def step_done(self, step: int) -> None:
        self.reached_step = step

    def loop_ended(self) -> None:
        self.seconds["step"] = self._loop_step()
        self._loop = None

    def write(self) -> dict | None:
        """goodput.json with this attempt's figures so far; returns the totals over all attempts."""
        if not self._enabled:
            return None
        seconds = {**self.seconds, "step": self._loop_step() if self._loop else self.seconds["step"]}
        wall = self._elapsed()
        attempt = {"wall_s": wall, "first_step": self.first_step, "reached_step": self.reached_step,
                   "seconds": {**seconds, "unaccounted": wall - sum(seconds.values())}, "lost_to_restarts": self.lost}
        attempts = [*self._earlier, attempt]
        report = {"attempts": attempts, "total": totals(attempts)}
        partial = f"{self._path}.partial"
        try:
            with open(partial, "w") as f:
                json.dump(report, f, indent=1)
            os.replace(partial, self._path)
        except OSError as e:  # a report: it never stops the run (a full disk stops it at the next checkpoint)
            logging.warning("could not write %s: %s", self._path, e)
        return report["total"]

    def _inside(self) -> float:
        return sum(self.seconds[c] for c in ("data_wait", "eval", "checkpoint", "log"))

    def _loop_step(self) -> float:
        """The loop's time so far less what it timed inside: dispatching steps and waiting for them."""
        start, inside = self._loop
        return max(0.0, time.monotonic() - start - (self._inside() - inside))

    def _elapsed(self) -> float:
        return time.monotonic() - self._started


def totals(attempts: list[dict]) -> dict:
    """Seconds per category over all attempts, with the lost steps' time moved into lost_to_restarts."""
    out = dict.fromkeys((*CATEGORIES, "lost_to_restarts", "unaccounted"), 0.0)
    for a in attempts:
        for category, seconds in a["seconds"].items():
            out[category] += seconds
    for earlier, later in zip(attempts, attempts[1:]):
        lost = later["lost_to_restarts"]["seconds"]
        step_and_data = earlier["seconds"]["step"] + earlier["seconds"]["data_wait"]
        share = lost / step_and_data if step_and_data else 0.0
        out["step"] -= share * earlier["seconds"]["step"]
        out["data_wait"] -= share * earlier["seconds"]["data_wait"]
        out["lost_to_restarts"] += lost
    wall = sum(a["wall_s"] for a in attempts)
    return {"wall_s": wall, "attempts": len(attempts), "seconds": out,
            "goodput": out["step"] / wall if wall else 0.0}


def summary(total: dict) -> str:
    """One line: the share of the wall time spent in train steps (goodput), then every other share."""
    wall, parts = total["wall_s"], total["seconds"]
    shares = ", ".join(f"{c} {100 * s / wall:.1f}%" for c, s in parts.items() if c != "step" and s)
    attempts = f"{total['attempts']} attempts" if total["attempts"] > 1 else "1 attempt"
    return f"goodput {100 * total['goodput']:.1f}% (train steps) of {wall:.1f}s wall over {attempts}; {shares}"


def _read(path: str) -> list[dict]:
    """The earlier attempts; a missing or damaged file starts the record afresh (it is only a report)."""
    try:
        with open(path) as f:
            return json.load(f)["attempts"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
