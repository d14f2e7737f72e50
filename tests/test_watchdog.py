"""The step watchdog: a stalled step ends every process with exit code 7, its stacks and the stalled rank
named, before a deadline; the limit follows the measured step time above a floor. The watchdog's own failures
are never silent: its thread's error is raised at the next beat, and a stall whose report fails still exits."""
import io
import os
import re
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import pytest

from jaxdist.config import base_config
from jaxdist.launch import _free_port
from jaxdist.train import watchdog
from tests.conftest import REPO

RUN = ["--config=configs/digits_dp.py", "--config.total_steps=60", "--config.watchdog.timeout_s=6"]


def _watchdog(**fields) -> watchdog.Watchdog:
    config = base_config()
    config.watchdog = ml_collections.ConfigDict({**config.watchdog.to_dict(), **fields})
    return watchdog.Watchdog(config)


def test_the_limit_is_the_timeout_or_factor_times_the_median_step_above_the_floor():
    assert _watchdog(timeout_s=42.0).limit_s() == 42.0
    dog = _watchdog(floor_s=0.05, factor=20.0)
    assert dog.limit_s() == 0.05  # no steps measured yet: the floor
    for step in range(1, 11):
        dog.beat("train", step)
        time.sleep(0.01)
    assert 20 * 0.01 <= dog.limit_s() < 20 * 0.05  # the median of ~10 ms intervals, times 20
    for step in range(11, 23):  # eval beats keep it alive, but the time from one to the next step is no step time:
        dog.beat("eval", step)  # counted, these 12 intervals of 50 ms would be the median
        time.sleep(0.05)
        dog.beat("train", step)
    assert dog.limit_s() < 20 * 0.05


def test_a_failure_in_the_watchdog_thread_is_a_warning_then_an_error_at_the_next_beat(monkeypatch, caplog):
    dog = _watchdog(timeout_s=60.0)

    def broken():
        raise RuntimeError("injected")
    monkeypatch.setattr(dog, "limit_s", broken)
    with dog:
        dog._thread.join(5.0)
        assert not dog._thread.is_alive()
        assert [r.getMessage() for r in caplog.records] == [
            "the step watchdog is off, its thread failed: RuntimeError: injected; the run stops at its next step"]
        with pytest.raises(watchdog.WatchdogError, match=r"thread failed \(RuntimeError: injected\)"):
            dog.beat("train", 1)


def test_the_watchdog_exits_even_when_its_report_cannot_be_written(monkeypatch):
    """stderr's reader is gone (a killed launcher): the report fails, and the stalled process must still end."""
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(open(write, "wb", buffering=0)))
    with _watchdog(timeout_s=0.5) as dog:
        dog._thread.join(5.0)
    assert exits == [watchdog.EXIT_CODE] and isinstance(dog._error, BrokenPipeError)  # the report did fail


# The stand-in for os._exit ends the watchdog's thread with SystemExit, which Python's own thread hook ignores
# and pytest's reports as a warning; any other exception in a thread still warns.
@pytest.mark.filterwarnings("ignore:(?s).*SystemExit:pytest.PytestUnhandledThreadExceptionWarning")
def test_a_peer_that_never_meets_at_the_shutdown_barrier_does_not_keep_a_process_from_exiting(monkeypatch):
    """With several processes, a firing watchdog leaves the coordination service with its peers; a peer that is
    gone or never fires must not hold the stalled process past the bound."""
    exits = []

    def exit_thread(code):  # os._exit would end pytest: record the code and end the watchdog's thread instead
        exits.append(code)
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", exit_thread)
    monkeypatch.setattr(watchdog, "_client", lambda: None)  # no coordination service answers
    monkeypatch.setattr(watchdog, "_LEAVE_S", 0.5)
    monkeypatch.setattr(jax.distributed, "shutdown", threading.Event().wait)  # the barrier never completes
    dog = _watchdog(timeout_s=0.5)
    dog._processes = 2
    started = time.monotonic()
    with dog:
        dog._thread.join(30.0)
    assert exits == [watchdog.EXIT_CODE] and time.monotonic() - started < 10


def test_an_unreadable_published_progress_leaves_that_rank_unknown(monkeypatch):
    class Client:
        def key_value_dir_get(self, prefix):
            return [(f"{prefix}0", "12 train"), (f"{prefix}1", "garbage")]
    monkeypatch.setattr(watchdog, "_client", Client)
    dog = _watchdog()
    dog._processes = 2
    assert dog._stalled().startswith("rank(s) 1 published no readable progress")


def _stacks_and_error(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return "\n".join(lines[:-1]), lines[-1]


def test_a_stalled_step_ends_one_process_with_its_stacks(tmp_path, cli_env):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jaxdist.main", *RUN, f"--workdir={tmp_path}"], cwd=REPO,
                          env={**cli_env, "JAXDIST_INJECT_STALL": "0:5"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr[-3000:]
    stacks, error = _stacks_and_error(proc.stderr)
    assert error.startswith("jaxdist: error: watchdog: rank 0 stopped in train after step 4: no progress for ")
    assert "one process: the stall is in this one" in error
    assert "in inject_stall" in stacks and "in _loop" in stacks  # where the main thread is: the stalled step
    assert time.monotonic() - started < 120


def _log_lines(stderr: str) -> str:
    """stderr without the stacks: the lines that say why a process ended the way it did."""
    stack_lines = ("  File", "Thread ", "Current thread")
    return "\n".join(line for line in stderr.splitlines() if line.strip() and not line.startswith(stack_lines))


def test_a_rank_stalled_in_a_step_ends_both_processes_and_is_named(tmp_path, cli_env):
    """Rank 1 sleeps instead of running step 5; rank 0 waits for it in the step's collective. Rank 0, which hosts
    the coordination service, fires first (rank 1's own limit is 60 s): had it just exited, rank 1 would have lost
    its coordinator while reporting and aborted (SIGABRT) instead of exiting 7."""
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "jaxdist.main", *RUN, f"--workdir={tmp_path}",
                               f"--config.watchdog.timeout_s={6 if rank == 0 else 60}", "--config.cpu_devices=4",
                               f"--coordinator_address={address}", "--num_processes=2", f"--process_id={rank}"],
                              cwd=REPO, env={**cli_env, "JAXDIST_INJECT_STALL": "1:5"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [7, 7], [_log_lines(e)[-1500:] for e in errors]
    assert time.monotonic() - started < 150
    lines = []
    for rank, stderr in enumerate(errors):
        stacks, error = _stacks_and_error(stderr)
        assert error.startswith(f"jaxdist: error: watchdog: rank {rank} stopped in train after step "), error
        assert "stalled: rank 1 at step 4, while the others reached step " in error, error
        assert ("in inject_stall" in stacks) == (rank == 1)  # the stalled rank's main thread is in the hook
        lines.append(error)
    assert ": no progress for " in lines[0] and ": rank 0's watchdog fired; " in lines[1], lines


def test_the_launcher_passes_code_7_on_and_says_it_is_the_watchdog(tmp_path, cli_env):
    """Through jaxdist.launch, as a user runs 2 processes: its own last line names the failed rank and the code
    as the watchdog's, and every rank's watchdog line, relayed, names rank 1 as the one that stalled."""
    proc = subprocess.run([sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4", "--", *RUN,
                           f"--workdir={tmp_path}"], cwd=REPO, env={**cli_env, "JAXDIST_INJECT_STALL": "1:5"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr[-2000:] + proc.stdout[-3000:]
    assert re.fullmatch(r"jaxdist\.launch: rank [01] exited with code 7 \(the step watchdog: its last line names "
                        r"the rank that stalled\)(; stopped the other 1 process\(es\))?",
                        proc.stderr.splitlines()[-1]), proc.stderr
    watchdog_lines = [line for line in proc.stdout.splitlines() if "jaxdist: error: watchdog: " in line]
    assert watchdog_lines and all("stalled: rank 1 at step 4, while the others reached step " in line
                                  for line in watchdog_lines), proc.stdout[-3000:]
