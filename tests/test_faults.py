"""Faults while a run is going, with real processes: a clear stop, one line, nothing lost.

Elsewhere: a flipped byte in a checkpoint and a failing save (test_checkpoint_faults.py), a torn
metrics line and a read-only eval (test_metrics_log.py), SIGTERM mid-training (test_checkpoint.py).
"""
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.helpers import run_cli

RUN = ["--config=configs/digits_dp.py", "--config.log_every=5"]


def _start(cli_env, *args):
    return subprocess.Popen([sys.executable, "-m", "jaxdist.main", *RUN, *args], cwd=REPO, env=cli_env,
                            stderr=subprocess.PIPE, text=True)


def _read_until(process, marker: str, timeout: float = 120) -> str:
    """stderr up to the first line containing `marker`."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, "".join(seen[-20:])
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout}s")


def _jaxdist_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("jaxdist:")]


def test_a_busy_workdir_is_refused_at_once_and_a_dead_runs_hold_ends_with_it(cli_env, tmp_path):
    workdir = tmp_path / "run"
    first = _start(cli_env, f"--workdir={workdir}", "--config.total_steps=100000", "--config.checkpoint_every=100000")
    try:
        _read_until(first, "opt_state:")  # logged after the workdir is held
        second = run_cli(cli_env, *RUN, f"--workdir={workdir}", "--config.total_steps=100000",
                         "--config.checkpoint_every=100000")
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
        [line] = [line for line in second.stderr.splitlines() if line.strip()]
        assert line.startswith(f"jaxdist: error: --workdir={workdir} is in use by process {first.pid} (")
        assert "jaxdist.main" in line
    finally:
        first.kill()  # SIGKILL: no handler runs, the kernel drops the hold
        first.wait()
    third = run_cli(cli_env, *RUN, f"--workdir={workdir}", "--config.total_steps=10", "--config.checkpoint_every=10")
    assert third.returncode == 0, third.stderr[-2000:]
    # A shortened run just runs: the config's 50 warmup steps are clipped, and the log says so.
    assert "schedule.warmup_steps=50 clipped to total_steps=10" in third.stderr


def test_a_signal_during_compile_exits_75_with_one_line(cli_env, tmp_path):
    process = _start(cli_env, f"--workdir={tmp_path / 'run'}", "--config.model.name=resnet20")
    _read_until(process, "opt_state:")  # the last line before compiling (ResNet-20: seconds of it)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 75, stderr[-2000:]
    assert _jaxdist_lines(stderr) == ["jaxdist: stopped by SIGTERM outside the train steps (setup, compiling or the "
                                      "last save); the latest complete checkpoint is kept; rerun the same command to "
                                      "resume (exit code 75)"]
    assert "compiled train" not in stderr  # it stopped in the compiler, not after it


def test_a_second_ctrl_c_stops_at_once_with_one_line(cli_env, tmp_path):
    """The first Ctrl-C asks for a save after the step; the second, while that save is written, ends the
    process at once (no KeyboardInterrupt traceback), the earlier complete checkpoints kept."""
    workdir = tmp_path / "run"
    process = _start(cli_env, f"--workdir={workdir}", "--config.total_steps=100000", "--config.checkpoint_every=10")
    _read_until(process, "step 15/")
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 75 and "Traceback" not in stderr, stderr[-2000:]
    [line] = _jaxdist_lines(stderr)
    assert line.startswith("jaxdist: stopped by") and "SIGINT" in line and "checkpoint is kept" in line, line
    steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert steps and steps[-1] >= 10  # the saves before the signal are there and complete
    resumed = run_cli(cli_env, *RUN, f"--workdir={workdir}", f"--config.total_steps={steps[-1] + 5}",
                      "--config.checkpoint_every=10")
    assert resumed.returncode == 0 and f"resumed from step {steps[-1]}" in resumed.stderr, resumed.stderr[-2000:]


def test_a_model_that_overflows_is_never_saved_even_when_skipping(cli_env, tmp_path):
    """lr=1e39 is inf in float32: the gradient is finite, the update is not. nan_policy=skip skips
    non-finite *updates*; a non-finite *state* cannot be skipped, so the run stops before saving it."""
    workdir = tmp_path / "run"
    result = run_cli(cli_env, *RUN, f"--workdir={workdir}", "--config.optimizer.lr=1e39", "--config.nan_policy=skip",
                     "--config.total_steps=4", "--config.checkpoint_every=1", "--config.schedule.warmup_steps=0")
    assert result.returncode == 3, result.stderr[-2000:]
    [line] = _jaxdist_lines(result.stderr)
    assert line.startswith("jaxdist: error: the model's state is non-finite after step 1")
    assert not [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
