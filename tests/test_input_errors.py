"""A data reader that fails mid-run (an image that passed the start-up check and then cannot be decoded):
the run ends at that step with the reader's own message, exit code 6, its metrics and checkpoints kept, on
one process and on two (jaxdist.launch stops the other and passes the code on), whether the reader is one
of the pipeline's threads or a worker process (data.worker_count)."""
import dataclasses
import json
import multiprocessing
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from jaxdist.data import pipeline, sources
from jaxdist.errors import InputError
from jaxdist.train import loop
from tests.conftest import REPO
from tests.helpers import tiny_config


@pytest.fixture
def folder(tmp_path):
    """2 classes x 40 decodable 16x16 JPEGs."""
    rng = np.random.default_rng(0)
    for label in range(2):
        (tmp_path / "images" / f"c{label}").mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"c{label}" / f"{i:03d}.jpg", quality=90)
    return tmp_path / "images"


def _truncate(folder):
    """Every image of class c1 keeps 70% of its bytes: PIL still opens it, decoding fails."""
    for path in sorted((folder / "c1").iterdir()):
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * 0.7)])


def _run_until_step_10_then_break_the_data(command, folder, env):
    """Starts `command`, truncates the files once step 10 is logged; (exit code, output)."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, logged = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "step 10/3000" in line:
                logged.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert logged.wait(240), "".join(lines)[-3000:]
    _truncate(folder)
    proc.wait(timeout=300)
    reader.join(timeout=10)
    return proc.returncode, "".join(lines)


RUN = ["--config=configs/digits_dp.py", "--config.data.name=folder", "--config.model.num_classes=2",
       "--config.data.image_size=16", "--config.data.val_fraction=0.25", "--config.batch_size=16",
       "--config.eval_batch_size=16", "--config.total_steps=3000", "--config.log_every=5",
       "--config.checkpoint_every=5", "--config.eval_every=1000"]


# Reader threads on 1 process, worker processes on 2 (each rank's own workers): both paths, two runs.
# test_a_worker_process_that_raises_... below covers workers on 1 process, in-process and deterministically.
@pytest.mark.parametrize("processes,workers", [(1, 0), (2, 2)], ids=["1-process-threads", "2-processes-workers"])
def test_a_reader_failing_mid_run_ends_the_run_with_its_message(folder, tmp_path, cli_env, processes, workers):
    workdir = tmp_path / "run"
    args = [*RUN, f"--config.data.path={folder}", f"--workdir={workdir}", f"--config.data.worker_count={workers}"]
    if processes == 1:
        command = [sys.executable, "-m", "jaxdist.main", *args]
    else:
        command = [sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4", "--", *args]
    code, output = _run_until_step_10_then_break_the_data(command, folder, cli_env)
    assert code == 6, output[-3000:]
    errors = [line for line in output.splitlines() if "jaxdist: error: reading " in line]
    assert errors, output[-3000:]
    assert "Traceback" not in output
    for line in errors:  # the reader's own message: which file, what PIL said
        assert f"failed: OSError: cannot decode image {folder / 'c1'}/" in line, line
        assert "(image file is truncated" in line and line.endswith(
            "remove or replace the file; the latest complete checkpoint is kept: fix the data and rerun to resume")
    if processes == 2:
        assert "jaxdist.launch: rank " in output and "exited with code 6" in output
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps[:2] == [5, 10] and steps == list(range(5, 5 * len(steps) + 1, 5))  # flushed up to the failure
    assert (workdir / "goodput.json").exists()


class _UnreadableRecord:
    """`source` but for record `bad`, whose reading raises as a file that can no longer be decoded does."""

    def __init__(self, source, bad: int):
        self.source, self.bad = source, bad

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"cannot decode image c1/{i:03d}.jpg (image file is truncated)")
        return self.source[i]


@pytest.mark.parametrize("split, what, logged, saved", [
    ("train", "the batch of step 3", [(2, "train")], [2]),
    ("test", "the test split", [(2, "train"), (4, "train")], [2]),  # in the eval at step 4, before its save
])
def test_a_worker_process_that_raises_stops_the_loop_there_and_the_workers_with_it(monkeypatch, tmp_path, split, what,
                                                                                  logged, saved):
    """In-process, on one process with 2 worker processes, in training and in the eval of step 4: the exception
    crosses the process boundary with its type and message, and the loop stops the workers on its way out instead
    of leaving them to the exit handlers (where grain 0.2.18 can stop one from two threads at once and print a
    traceback after the error line)."""
    real_load = sources.load
    bad = []

    def load(data_config, *args, **kwargs):
        data = real_load(data_config, *args, **kwargs)
        # The first row of step 3's batch, or a row of eval batch 6 (both workers running by then).
        bad.append(int(pipeline.epoch_permutation(0, 0, data.train.size)[2 * 16]) if split == "train" else 100)
        broken = sources.Split(_UnreadableRecord(getattr(data, split).source, bad[0]), getattr(data, split).transform)
        return dataclasses.replace(data, **{split: broken})

    monkeypatch.setattr(sources, "load", load)
    config = tiny_config(mesh=dict(data=8), total_steps=8, log_every=2, checkpoint_every=2, eval_every=4,
                         **{"data.worker_count": 2})
    before = set(multiprocessing.active_children())
    with pytest.raises(InputError) as error:
        loop.train_and_evaluate(config, str(tmp_path))
    assert str(error.value) == (f"reading {what} failed: OSError: cannot decode image c1/{bad[0]:03d}.jpg "
                                "(image file is truncated)")
    assert not set(multiprocessing.active_children()) - before
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == logged
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == saved
