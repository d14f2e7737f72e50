"""A metrics write that fails mid-run (the disk holding metrics.jsonl or the TensorBoard events is full): the
run stops at that step with one line naming what failed and the system's reason, exit code 4, the rows and
checkpoints written before kept. The failures are real: the file written is /dev/full, where every write
fails with ENOSPC."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxdist.train.metrics import MetricsWriteError, MetricsWriter
from tests.conftest import REPO

FULL = "/dev/full"
pytestmark = pytest.mark.skipif(not os.path.exists(FULL), reason="needs Linux's /dev/full")


def _events_files_on_a_full_disk(workdir, seconds=600):
    """The TensorBoard events file a run opens in the next `seconds` is /dev/full: tensorboardX names it
    events.out.tfevents.TIME.HOST. (Should that name change, the run writes a real file and the test fails.)"""
    events = workdir / "tensorboard"
    events.mkdir(parents=True)
    now = int(time.time())
    for second in range(now, now + seconds):
        (events / f"events.out.tfevents.{second}.{socket.gethostname()}").symlink_to(FULL)
    return events


def test_a_full_disk_under_the_tensorboard_events_stops_the_run_at_that_step(tmp_path, cli_env):
    events = _events_files_on_a_full_disk(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "jaxdist.main", "--config=configs/digits_dp.py",
                           f"--workdir={tmp_path}", "--config.total_steps=60", "--config.log_every=10",
                           "--config.checkpoint_every=5", "--config.eval_every=1000"],
                          cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"jaxdist: error: writing step 10's train metrics to the TensorBoard events in {events} failed "
        "([Errno 28] No space left on device); free space or fix the directory, then rerun to resume from the "
        "latest complete checkpoint")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [(10, "train")]  # written before the events, at that step
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["5"]


def test_a_full_disk_under_metrics_jsonl_raises_at_that_write_and_closes(tmp_path):
    with pytest.raises(MetricsWriteError) as error, MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, "train", {"loss": 1.0})
        full = os.open(FULL, os.O_WRONLY)
        os.dup2(full, writer._jsonl.fileno())  # the disk fills up: metrics.jsonl's descriptor now writes to /dev/full
        os.close(full)
        writer.write(2, "train", {"loss": 0.5})
    assert str(error.value) == (
        f"writing step 2's train metrics to {tmp_path / 'metrics.jsonl'} failed ([Errno 28] No space left on "
        "device); free space or fix the directory, then rerun to resume from the latest complete checkpoint")
    # Closing, which flushed the failed line again, raised nothing more; the row written before is kept.
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
