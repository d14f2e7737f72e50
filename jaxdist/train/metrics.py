"""Where metrics go: the console, `metrics.jsonl` (one JSON object per line), TensorBoard events, and
`curves.png` (jaxdist/plot.py), redrawn at every eval line and, if lines came after it, on closing
(a run stopped by a signal or a non-finite loss also leaves an up-to-date picture).

Only process 0 writes; on the others every call is a no-op, so the loop never branches on rank.
"""
import json
import os

from absl import logging


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool):
        self._enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._undrawn = 0  # lines written since curves.png was last drawn

    def write(self, step: int, split: str, metrics: dict[str, float], console: str | None = None):
        """One metrics.jsonl line and TensorBoard scalars; `console` replaces the default log line."""
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        logging.info("%s", console or f"{split} step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self._undrawn += 1
        if split == "eval":
            self._write_curves()

    def _write_curves(self) -> None:
        """A picture of the run so far. Only a view of metrics.jsonl: if it cannot be drawn (disk full, a
        damaged line from an earlier run), say so and train on, the metrics themselves are written."""
        from jaxdist import plot

        try:
            plot.write_curves(self._workdir)
        except (OSError, ValueError) as e:
            logging.warning("could not write %s: %s", plot.CURVES_FILE, e)
        self._undrawn = 0

    def save_json(self, name: str, value) -> None:
        """A small file of run facts next to the metrics (e.g. class names, to map predictions back)."""
        if self._enabled:
            with open(os.path.join(self._workdir, name), "w") as f:
                json.dump(value, f)

    def close(self):
        if self._enabled:
            if self._undrawn:
                self._write_curves()
            self._jsonl.close()
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
