"""A data reader that fails mid-run (an image that passed the start-up check and then cannot be decoded):
the run ends at that step with the reader's own message, exit code 6, its metrics and checkpoints kept, on
one process and on two (jaxdist.launch stops the other and passes the code on)."""
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO


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


@pytest.mark.parametrize("processes", [1, 2])
def test_a_reader_failing_mid_run_ends_the_run_with_its_message(folder, tmp_path, cli_env, processes):
    workdir = tmp_path / "run"
    args = [*RUN, f"--config.data.path={folder}", f"--workdir={workdir}"]
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
