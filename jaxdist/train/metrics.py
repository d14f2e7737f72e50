"""Where metrics go: the console, `metrics.jsonl` (one JSON object per line), TensorBoard events, and
`curves.png` (jaxdist/plot.py), redrawn at every eval line and, if lines came after it, on closing
(a run stopped by a signal or a non-finite loss also leaves an up-to-date picture).

metrics.jsonl is strict JSON (a non-finite value is `null`) with one row per (split, step): a resumed
run first drops the rows it will log again. `--mode=eval` writes `eval.jsonl` instead (write_eval).

Only process 0 writes; on the others every call is a no-op, so the loop never branches on rank. A write that
fails (disk full) raises MetricsWriteError: the run stops at that step with one line, exit code 4.
"""
import contextlib
import datetime
import json
import math
import os
import time

from absl import logging

from jaxdist import plot
from jaxdist.errors import CheckpointWriteError

EVAL_FILE = "eval.jsonl"


def json_line(row: dict) -> str:
    """`row` as one line of strict JSON: NaN and inf become null (json.dumps would write the tokens NaN
    and Infinity, which jq, JavaScript and most JSON readers reject)."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


class MetricsWriteError(CheckpointWriteError):
    """metrics.jsonl or the TensorBoard events could not be written (disk full, a directory gone): one line with
    the original message, exit code 4 as for a failed checkpoint save (the same storage, the same remedy). The
    rows and checkpoints written before are kept, and a rerun resumes from the latest checkpoint."""


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
        """`resume_step`: the checkpoint step this run starts from (0: a fresh run); rows logged after it
        by an earlier run of this workdir are dropped, since this run logs those steps again."""
        self._enabled = enabled
        if not enabled:
            return
        from tensorboardX.event_file_writer import EventsWriter

        self._workdir = workdir
        path = os.path.join(workdir, plot.METRICS_FILE)
        self._tb_dir = os.path.join(workdir, "tensorboard")
        with _writing(path):
            os.makedirs(workdir, exist_ok=True)
            _keep_rows_through(path, resume_step)
            self._jsonl = open(path, "a")
        with _writing(f"the TensorBoard events in {self._tb_dir}"):
            os.makedirs(self._tb_dir, exist_ok=True)
            self._tb = EventsWriter(os.path.join(self._tb_dir, "events"))
        self._undrawn = 0  # lines written since curves.png was last drawn

    def write(self, step: int, split: str, metrics: dict[str, float], console: str | None = None):
        """One metrics.jsonl line and TensorBoard scalars, both flushed now; `console` replaces the default log
        line. The events are written here, not in tensorboardX's SummaryWriter thread: a write error killed that
        thread with a traceback, the run trained on, and its next writes blocked forever on the thread's full
        queue. Measured on the 2-core VM: 4 ms per log line with the flush, against 1.6 ms to queue them there."""
        if not self._enabled:
            return
        with _writing(f"step {step}'s {split} metrics to {self._jsonl.name}"):
            self._jsonl.write(json_line({"step": step, "split": split, **metrics}))
            self._jsonl.flush()
        with _writing(f"step {step}'s {split} metrics to the TensorBoard events in {self._tb_dir}"):
            for name, value in metrics.items():
                self._tb.write_event(_scalar_event(f"{split}/{name}", value, step))
            self._tb.flush()
        logging.info("%s", console or _console(split, step, metrics))
        self._undrawn += 1
        if split == "eval":
            self._write_curves()

    def _write_curves(self) -> None:
        """A picture of the run so far. Only a view of metrics.jsonl: if it cannot be drawn (disk full, a
        damaged line from an earlier run), say so and train on, the metrics themselves are written."""
        try:
            plot.write_curves(self._workdir)
        except (OSError, ValueError) as e:
            logging.warning("could not write %s: %s", plot.CURVES_FILE, e)
        self._undrawn = 0

    def save_json(self, name: str, value) -> None:
        """A small file of run facts next to the metrics (e.g. class names, to map predictions back)."""
        if self._enabled:
            path = os.path.join(self._workdir, name)
            with _writing(path), open(path, "w") as f:
                json.dump(value, f)

    def close(self):
        """Every write was flushed, and raised if that failed: only a file whose write failed still holds bytes,
        and closing it fails again with nothing new to report."""
        if self._enabled:
            if self._undrawn:
                self._write_curves()
            for file in (self._jsonl, self._tb):
                with contextlib.suppress(OSError):
                    file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_eval(workdir: str, step: int, result: dict, enabled: bool) -> None:
    """--mode=eval's result: logged, and one row in eval.jsonl, apart from the training log (evaluating again
    would add duplicate, out-of-order rows to metrics.jsonl). A workdir that cannot be written (a finished
    run, read-only) is still evaluated: then a warning says the row is only in the log."""
    if not enabled:
        return
    logging.info("%s", _console("eval", step, result))
    path = os.path.join(workdir, EVAL_FILE)
    row = {"step": step, **result, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        with open(path, "a") as f:
            f.write(json_line(row))
    except OSError as e:
        logging.warning("%s not written (%s); the result is only in this log", path, e.strerror or e)


@contextlib.contextmanager
def _writing(what: str):
    """An OSError while writing `what` becomes a MetricsWriteError naming it, with the original message."""
    try:
        yield
    except OSError as e:
        raise MetricsWriteError(f"writing {what} failed ({e}); free space or fix the directory, then rerun to "
                                f"resume from the latest complete checkpoint") from None


def _scalar_event(tag: str, value: float, step: int):
    """A TensorBoard event holding one scalar, as tensorboardX's SummaryWriter.add_scalar writes it."""
    from tensorboardX.proto.event_pb2 import Event  # imported where used: only process 0 writes events
    from tensorboardX.summary import scalar

    return Event(wall_time=time.time(), step=step, summary=scalar(tag, value))


def _console(split: str, step: int, metrics: dict) -> str:
    return f"{split} step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _keep_rows_through(path: str, step: int) -> None:
    """Rewrites `path` without the rows of steps after `step` and without a last line that does not parse
    (torn by a kill mid-write: appended to, it would merge with the next row). Atomic (a temporary file,
    then os.replace), so a kill now loses nothing. Other damaged lines are not this run's to judge: kept."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return
    lines = [line for line in text.splitlines() if line.strip()]
    kept, dropped = [], 0
    for number, line in enumerate(lines, 1):
        row = _row(line)
        if row is None and number == len(lines):
            logging.warning("%s: dropped its last line, damaged (a write cut short): %.200r", path, line)
        elif row is not None and row["step"] > step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        logging.info("%s: dropped %d rows after step %d, which this run logs again", path, dropped, step)
    if "".join(kept) != text:
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)


def _row(line: str) -> dict | None:
    """The metrics row on `line`, or None if it is not one (not JSON, or no integer step)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None
