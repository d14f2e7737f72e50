"""Real multi-process runs on this machine: 2 processes x 4 CPU devices through jaxdist.launch, gloo
collectives over 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import run_cli

STEPS = ["--config.log_every=1", "--config.eval_every=1000", "--config.schedule.warmup_steps=2"]


def _args(workdir, total_steps=12, checkpoint_every=6, *extra):
    return ["--config=configs/digits_dp.py", f"--workdir={workdir}", f"--config.total_steps={total_steps}",
            f"--config.checkpoint_every={checkpoint_every}", *STEPS, *extra]


def _launch(env, *main_args, nproc=2, timeout=400):
    return subprocess.run([sys.executable, "-m", "jaxdist.launch", f"--nproc={nproc}", "--devices_per_proc=4", "--",
                           *main_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, cli_env):
    workdir = tmp_path_factory.mktemp("mp")
    result = _launch(cli_env, *_args(workdir))
    assert result.returncode == 0, result.stdout[-3000:]
    return workdir, result


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, cli_env):
    workdir = tmp_path_factory.mktemp("single")
    result = run_cli(cli_env, *_args(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_two_processes_give_the_losses_of_one(two_process_run, one_process_run):
    workdir, result = two_process_run
    assert "[rank 1]" in result.stdout and "[rank 0]" in result.stdout
    assert sum("done: 12 steps" in line for line in result.stdout.splitlines()) == 1  # process 0 logs alone
    two, one = _losses(workdir), _losses(one_process_run)
    assert sorted(two) == list(range(1, 13))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)


def test_the_launch_log_has_no_library_noise(two_process_run):
    """Gloo's line per connection and XLA's GSPMD notice per compiled program tell a user nothing."""
    _, result = two_process_run
    assert "[Gloo]" not in result.stdout and "GSPMD" not in result.stdout
    assert "[rank 0]" in result.stdout and "[rank 1]" in result.stdout


def test_checkpoints_move_between_process_counts(two_process_run, one_process_run, cli_env, tmp_path):
    """Written by 2 processes, continued by 1: the same losses as a run that was on 1 process throughout."""
    import shutil

    workdir, _ = two_process_run
    one, reference = tmp_path / "one", tmp_path / "reference"
    shutil.copytree(workdir, one)
    shutil.copytree(one_process_run, reference)
    resumed = run_cli(cli_env, *_args(one, 18))
    assert resumed.returncode == 0 and "resumed from step 12" in resumed.stderr, resumed.stderr[-2000:]
    assert run_cli(cli_env, *_args(reference, 18)).returncode == 0
    moved, stayed = _losses(one), _losses(reference)
    assert sorted(moved) == sorted(stayed) == list(range(1, 19))
    np.testing.assert_allclose([moved[s] for s in range(13, 19)], [stayed[s] for s in range(13, 19)], rtol=1e-5)
    back = _launch(cli_env, *_args(one, 24))  # and back to 2 processes
    assert back.returncode == 0 and "resumed from step 18" in back.stdout, back.stdout[-2000:]
    assert sorted(_losses(one))[-1] == 24


def _pid_of_rank(rank: int, workdir) -> int:
    """The jaxdist.main process of `rank` for this workdir, found through /proc."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if f"--workdir={workdir}".encode() in cmdline and f"JAXDIST_PROCESS_ID={rank}\0".encode() in environ:
            return int(pid)
    raise AssertionError(f"no process of rank {rank} for {workdir}")


def test_a_dead_process_stops_the_launch_and_a_rerun_resumes(cli_env, tmp_path):
    workdir = tmp_path / "run"
    args = _args(workdir, 400, 5)
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4",
                             "--grace=10", "--", *args], cwd=REPO, env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "step 10/400" in line:
            break
    killed_at = time.monotonic()
    os.kill(_pid_of_rank(1, workdir), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1].startswith("jaxdist.launch: rank 1 exited with code -9")
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    assert saved
    rerun = _launch(cli_env, *_args(workdir, saved[-1] + 4, 5))
    assert rerun.returncode == 0 and f"resumed from step {saved[-1]}" in rerun.stdout, rerun.stdout[-2000:]


def test_unreachable_coordinator_is_one_line_not_a_hang(cli_env, tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    result = run_cli(cli_env, *_args(tmp_path), f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     "--process_id=1", "--distributed_timeout=3", timeout=60)
    assert time.monotonic() - t < 40
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines[-1].startswith(
        f"jaxdist: error: cannot reach the coordinator at 127.0.0.1:{port} within 3s"), result.stderr[-2000:]


def test_sigterm_to_the_launcher_saves_once_at_a_step_all_processes_agree_on(cli_env, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4", "--",
                             *_args(workdir, 2000, 1000)], cwd=REPO, env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "step 10/2000" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    stops = sorted(line.split("] ", 1)[0] + " " + line.split("after step ")[1].split(";")[0]
                   for line in (lines + out.splitlines()) if "stopped by a signal after step" in line)
    assert proc.returncode == 75, err[-2000:]
    step = stops[0].split()[-1]
    assert stops == [f"[rank 0 {step}", f"[rank 1 {step}"]  # both ranks stopped after the same step
    assert (workdir / "checkpoints" / step).is_dir()


def test_a_process_that_never_comes_is_named_in_one_line(cli_env, tmp_path):
    """Process 0 and 1 of 3 start, process 2 never does: process 0 names it (JAX alone aborts, exit 134)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [*_args(tmp_path / "run"), f"--coordinator_address=127.0.0.1:{port}", "--num_processes=3",
              "--distributed_timeout=4", "--config.cpu_devices=2"]
    peer = subprocess.Popen([sys.executable, "-m", "jaxdist.main", *common, "--process_id=1"], cwd=REPO, env=cli_env,
                            stderr=subprocess.PIPE, text=True)
    first = run_cli(cli_env, *common, "--process_id=0", timeout=60)
    peer_stderr = peer.communicate(timeout=60)[1]
    lines = [line for line in first.stderr.splitlines() if line.strip()]
    assert first.returncode == 2 and lines == [
        f"jaxdist: error: process 2 of 3 did not join within 4s (coordinator 127.0.0.1:{port}); start them with the "
        "same --coordinator_address and --num_processes"], first.stderr[-2000:]
    assert peer.returncode == 2 and "jaxdist: error: cannot reach the coordinator" in peer_stderr
    assert not (tmp_path / "run").exists()


def test_ctrl_c_to_the_launcher_reaches_every_process(cli_env, tmp_path):
    """SIGINT to the launcher alone (as `kill -INT`; a terminal's Ctrl-C reaches the whole group) is
    forwarded: each process stops with its own one line and exit 75, and so does the launcher."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4", "--",
                             *_args(tmp_path / "run"), "--config.model.name=resnet20"], cwd=REPO, env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[rank 0]") and "opt_state:" in line:  # the last line before compiling
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stops = sorted(line.split("]", 1)[0] for line in lines + out.splitlines() if "stopped by SIGINT" in line)
    assert proc.returncode == 75 and "Traceback" not in out + err, out[-2000:] + err[-2000:]
    assert stops == ["[rank 0", "[rank 1"]
