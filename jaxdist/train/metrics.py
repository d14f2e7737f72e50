"""Where metrics go: the console, `metrics.jsonl` (one JSON object per line) and TensorBoard events.

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

    def write(self, step: int, split: str, metrics: dict[str, float], console: str | None = None):
        """One metrics.jsonl line and TensorBoard scalars; `console` replaces the default log line."""
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        logging.info("%s", console or f"{split} step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def save_json(self, name: str, value) -> None:
        """A small file of run facts next to the metrics (e.g. class names, to map predictions back)."""
        if self._enabled:
            with open(os.path.join(self._workdir, name), "w") as f:
                json.dump(value, f)

    def close(self):
        if self._enabled:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
