"""Checkpoint faults after or during the write: a byte changed on disk (refused on resume and eval by the
step's checksums), a checkpoint without checksums (loads, with a warning), and a save that fails mid-run,
in Orbax's background write or when it starts (the run stops at the next step: one line, exit 4, the
latest complete step kept and resumable)."""
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdist.errors import CheckpointWriteError, ConfigError
from jaxdist.train import checkpoint, loop
from tests.conftest import REPO
from tests.helpers import run_cli, tiny_config


def _cli_args(workdir, *extra):
    return ["--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.log_every=5",
            "--config.schedule.warmup_steps=5", *extra]


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("jaxdist:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def test_a_flipped_byte_is_refused_on_resume_and_eval_and_nothing_is_deleted(tmp_path, cli_env):
    workdir = tmp_path / "run"
    steps = ("--config.total_steps=8", "--config.checkpoint_every=8", "--config.eval_every=8")
    assert run_cli(cli_env, *_cli_args(workdir, *steps)).returncode == 0
    step_dir = workdir / "checkpoints" / "8"
    largest = max((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
                  key=lambda f: f.stat().st_size)  # an array data file, same size after the flip
    _flip_a_byte(largest)
    before = sorted(str(p) for p in workdir.rglob("*"))

    for mode in ("train", "eval"):
        result = run_cli(cli_env, *_cli_args(workdir, "--config.total_steps=16", "--config.checkpoint_every=8",
                                             "--config.eval_every=8", f"--mode={mode}"))
        line = _one_error_line(result)
        assert result.returncode == 2 and line.startswith(
            f"jaxdist: error: checkpoint {step_dir} cannot be read ({largest.relative_to(step_dir)} changed"), line
        assert "nothing was deleted" in line
        assert sorted(str(p) for p in workdir.rglob("*")) == before


def _tiny_checkpoint(directory):
    """Step 1 of a one-array state, saved through the Checkpointer (no model to compile); returns the
    abstract state and shardings that restore it."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {"w": jax.device_put(jnp.arange(64.0), sharding)}
    with checkpoint.Checkpointer(directory, 3) as ckpt:
        ckpt.save(1, state, tiny_config(), {"next": 0})
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state), {"w": sharding}


def test_checksums_are_checked_and_a_checkpoint_without_them_loads_with_a_warning(tmp_path, caplog):
    abstract, shardings = _tiny_checkpoint(tmp_path)
    step_dir = tmp_path / "1"
    saved = json.loads((step_dir / checkpoint.CHECKSUMS).read_text())["sha256"]
    assert {"state/_METADATA", "data/metadata", "config/metadata"} <= set(saved)  # every file of the step

    _flip_a_byte(step_dir / "data" / "metadata")  # JSON that may still parse: the checksum catches it anyway
    with pytest.raises(ConfigError, match=r"1 cannot be read \(data/metadata changed after it was saved"):
        checkpoint.Checkpointer(tmp_path, 1, read_only=True).restore(1, abstract, shardings)

    _flip_a_byte(step_dir / "data" / "metadata")  # back as saved; then as a checkpoint from before checksums
    (step_dir / checkpoint.CHECKSUMS).unlink()
    state, data = checkpoint.Checkpointer(tmp_path, 1, read_only=True).restore(1, abstract, shardings)
    np.testing.assert_array_equal(state["w"], np.arange(64.0))
    assert data == {"next": 0} and "loaded unverified" in caplog.text


def test_a_failed_background_save_stops_the_loop_at_the_next_step(tmp_path, monkeypatch, caplog):
    """The write itself fails in Orbax's background thread (as when the disk fills up), for the save at step
    100 of 200: the loop's per-step check stops the run right after, not at the next save (step 150), and
    Orbax's log lines about it come without their tracebacks."""
    class DiskFull:  # an Orbax commit future whose write failed
        def result(self, timeout=None):
            raise OSError(28, "No space left on device")

    real = ocp.JsonCheckpointHandler.async_save

    async def failing_at_100(self, directory, *args, **kwargs):
        futures = await real(self, directory, *args, **kwargs) or []
        return [*futures, DiskFull()] if f"{os.sep}100." in str(directory) else futures

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", failing_at_100)
    config = tiny_config(mesh=dict(data=8), total_steps=200, checkpoint_every=50, eval_every=200, log_every=5,
                         keep_checkpoints=1)  # a failed save must not make Orbax delete the step before it
    expected = (rf"^saving checkpoint {re.escape(str(tmp_path))}/checkpoints/100 failed \(OSError: \[Errno 28\] No "
                r"space left on device\); the latest complete checkpoint is step 50; free space")
    with pytest.raises(CheckpointWriteError, match=expected):
        loop.train_and_evaluate(config, str(tmp_path))
    trained = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"]
    assert 100 <= max(trained) < 150
    assert not [r for r in caplog.records if r.exc_info]
    assert [r for r in caplog.records if "No space left" in r.getMessage()]  # Orbax's lines, one line each
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["50"]


def _make_saves_fail(ckpts):
    """From now on no save into `ckpts` can start; returns the function that undoes it. Read-only, unless
    permissions do not stop this process (root): then the directory is moved away and a file takes its name."""
    probe = ckpts.with_name("probe")
    probe.mkdir(mode=0o555)
    try:
        (probe / "x").mkdir()
    except PermissionError:
        ckpts.chmod(0o555)
        return lambda: ckpts.chmod(0o755)
    moved = ckpts.with_name("checkpoints.moved")
    ckpts.rename(moved)
    ckpts.write_text("")
    return lambda: (ckpts.unlink(), moved.rename(ckpts))


def test_a_save_failing_mid_run_exits_4_and_the_last_complete_step_resumes(tmp_path, cli_env):
    workdir = tmp_path / "run"
    args = _cli_args(workdir, "--config.total_steps=3000", "--config.checkpoint_every=20", "--config.eval_every=3000",
                     "--config.log_every=20")
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.main", *args], cwd=REPO, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = workdir / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (
            ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    undo = _make_saves_fail(ckpts)
    try:
        stderr = proc.communicate(timeout=120)[1]  # promptly: not after Orbax's threads wait 5 minutes
    finally:
        proc.kill()
        undo()

    assert proc.returncode == 4, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("jaxdist:")]
    assert len(lines) == 1 and "Traceback" not in stderr and len(stderr.splitlines()) < 100, stderr[-3000:]
    found = re.fullmatch(rf"jaxdist: error: saving checkpoint {re.escape(str(ckpts))}/(\d+) failed \(\w+Error: .*\); "
                         r"the latest complete checkpoint is step (\d+); free space or fix the directory, then rerun "
                         r"to resume", lines[0])
    assert found, lines[0]
    failed, kept = int(found[1]), int(found[2])
    trained = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"]
    assert kept < failed and max(trained) <= failed + 20  # stopped at once, not at step 3000

    resumed = run_cli(cli_env, *args, f"--config.total_steps={kept + 20}")
    assert resumed.returncode == 0 and f"resumed from step {kept}" in resumed.stderr, resumed.stderr[-3000:]
