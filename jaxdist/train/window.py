"""The steps between two log points: their metrics (left on device until read), input wait and timing.

Reading is the host sync, so the loop does it only at log and checkpoint points. That is also where
the non-finite guard looks: the step itself never applies a non-finite update (train/step.py), and
here `nan_policy='stop'` turns the first such step into an error naming it, before anything is saved.

A read stacks the steps' metrics on the device, 32 steps per call of one small program, and fetches one
array per chunk and metric instead of one per step and metric: `jax.device_get` of 100 steps' dicts took
20-40 ms on an H100, as long as 50-100 of its CNN steps (docs/performance.md, "On one GPU").
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdist.data import pipeline

EXIT_CODE_NONFINITE = 3


class NonFiniteError(Exception):
    def __init__(self, step: int, latest_checkpoint: int | None, in_state: bool = False):
        """`in_state`: the model itself (parameters, statistics, optimizer state) became non-finite, which
        no skipped step can undo: neither policy saves or reports it."""
        kept = f"the latest checkpoint (step {latest_checkpoint}) is the last good one" if latest_checkpoint \
            else "no checkpoint was written"
        if in_state:
            super().__init__(f"the model's state is non-finite after step {step} (a finite gradient overflowed it); "
                             f"it was not saved and {kept}; lower the learning rate or set optimizer.clip_norm")
        else:
            super().__init__(f"non-finite loss or gradient at step {step}; the update was not applied and {kept}; "
                             f"lower the learning rate, or set --config.nan_policy=skip to skip such steps")


CHUNK = 32  # steps stacked by one call of the program: one compile (~0.1 s on CPU), windows of any length


@jax.jit
def _stack(rows: list[dict]) -> dict:
    return jax.tree.map(lambda *values: jnp.stack(values), *rows)


def fetch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Steps' metric dicts (on device) as one host array per metric, in step order: stacked on the device
    CHUNK steps at a time (the last chunk padded with its last row), then one transfer per chunk and metric."""
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    stacked = jax.device_get([_stack(chunk + chunk[-1:] * (CHUNK - len(chunk))) for chunk in chunks])
    return {name: np.concatenate([s[name] for s in stacked])[:len(rows)] for name in stacked[0]}


class TrainWindow:
    def __init__(self, batch_size: int, total_steps: int, nan_policy: str, ideal_step_s: float | None = None):
        """`ideal_step_s`: a step's time at the chip's peak FLOP/s (parallel/report.py); given, the summary
        reports MFU, the fraction of it the window's steps reached."""
        self._batch_size, self._total_steps, self._nan_policy = batch_size, total_steps, nan_policy
        self._ideal_step_s = ideal_step_s
        self._metrics, self._steps = [], []  # the open window's steps: metrics on device until fetched
        self._host = []  # the window's fetched metrics: chunks of {name: values over steps}
        self._fetched = self._checked = 0  # the window's steps fetched, and checked for non-finite updates
        self._wait_s, self._start = 0.0, time.perf_counter()
        self._closed_s = 0.0  # seconds of the windows summarized so far
        self.skipped_total = 0

    def next_batch(self, batches, what: str):
        """The next batch, timed as input wait; `what`: its name in the InputError if reading it fails."""
        t = time.perf_counter()
        batch = pipeline.next_batch(batches, what)
        self._wait_s += time.perf_counter() - t
        return batch

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append(step)
        self._metrics.append(metrics)

    def _fetch(self) -> dict[str, np.ndarray]:
        """The window's metrics so far on the host, one array per metric; each step is fetched once."""
        if self._fetched < len(self._metrics):
            self._host.append(fetch(self._metrics[self._fetched:]))
            self._fetched = len(self._metrics)
        return {name: np.concatenate([chunk[name] for chunk in self._host]) for name in self._host[0]}

    def check_finite(self, latest_checkpoint) -> None:
        """Reads the not-yet-checked steps' guard flags; raises NonFiniteError under nan_policy='stop'."""
        if self._nan_policy == "off" or self._checked == len(self._metrics):
            return
        flags = self._fetch()["nonfinite"][self._checked:]
        bad = [s for s, f in zip(self._steps[self._checked:], flags) if f]
        self._checked = len(self._metrics)
        if bad and self._nan_policy == "stop":
            raise NonFiniteError(bad[0], latest_checkpoint)
        self.skipped_total += len(bad)

    def summary(self, step: int) -> tuple[dict, str]:
        """Means over the window plus throughput, and the console line; starts a new window."""
        host = self._fetch()
        means = {k: float(np.mean(v)) for k, v in host.items() if k != "nonfinite"}
        if self._nan_policy == "skip":
            means["skipped_updates"] = int(host["nonfinite"].sum())
        n = len(self._metrics)
        elapsed = time.perf_counter() - self._start
        self._closed_s += elapsed
        record = {**means, "images_per_s": n * self._batch_size / elapsed, "input_wait_ms": 1e3 * self._wait_s / n,
                  "train_s": self._closed_s}
        mfu = ""
        if self._ideal_step_s:
            record["mfu"] = self._ideal_step_s * n / elapsed
            mfu = f"MFU {record['mfu']:.1%} | "
        eta = (self._total_steps - step) * elapsed / n
        console = (f"step {step}/{self._total_steps} | loss {means['loss']:.4f} | acc {means['accuracy']:.4f} | "
                   f"{record['images_per_s']:,.0f} img/s | input wait {record['input_wait_ms']:.1f} ms/step | "
                   f"{mfu}ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self._metrics, self._steps, self._host, self._fetched, self._checked, self._wait_s = [], [], [], 0, 0, 0.0
        return record, console

    def train_seconds(self) -> float:
        """Seconds spent training since this process's first step: the summarized windows and the open one.
        Eval and checkpoint time is left out wherever a log point precedes it (restart_clock_if_empty)."""
        return self._closed_s + (time.perf_counter() - self._start if self._metrics else 0.0)

    def restart_clock_if_empty(self) -> None:
        """After a log point, eval and checkpoint work must not count against the next window's rate."""
        if not self._metrics:
            self._start = time.perf_counter()
