"""goodput.json: a run's wall time split by phase, across restarts of the same workdir."""
import json
import signal
import subprocess
import sys
import time

import pytest

from jaxdist.train import goodput
from tests.conftest import REPO
from tests.helpers import run_cli


def _attempt(wall, first, reached, step, data_wait, lost_steps=0, lost_s=0.0):
    seconds = {"init": 1.0, "compile": 2.0, "data_wait": data_wait, "step": step, "eval": 0.5, "checkpoint": 0.25,
               "log": 0.25}
    seconds["unaccounted"] = wall - sum(seconds.values())
    return {"wall_s": wall, "first_step": first, "reached_step": reached, "seconds": seconds,
            "lost_to_restarts": {"steps": lost_steps, "seconds": lost_s}}


def test_lost_steps_move_out_of_the_earlier_attempts_step_and_data_time():
    first = _attempt(14.0, 0, 80, step=8.0, data_wait=2.0)  # 80 steps in 10 s
    second = _attempt(10.0, 50, 100, step=4.0, data_wait=1.0, lost_steps=30, lost_s=3.75)
    total = goodput.totals([first, second])
    assert total["wall_s"] == 24.0 and total["attempts"] == 2
    assert total["seconds"]["lost_to_restarts"] == 3.75
    assert total["seconds"]["step"] == pytest.approx(12.0 - 3.75 * 0.8)  # the lost share, by its own step/data split
    assert total["seconds"]["data_wait"] == pytest.approx(3.0 - 3.75 * 0.2)
    assert sum(total["seconds"].values()) == pytest.approx(24.0)
    assert total["goodput"] == pytest.approx(total["seconds"]["step"] / 24.0)
    line = goodput.summary(total)
    assert line.startswith(f"goodput {100 * total['goodput']:.1f}% (train steps) of 24.0s wall over 2 attempts; ")
    assert "lost_to_restarts 15.6%" in line


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, cli_env):
    """A digits run killed (SIGKILL, no chance to save) between checkpoints 50 and 100, then rerun.

    The first run stalls before step 71 (the watchdog's test hook, with the watchdog off), so the kill
    lands at step 70 however slow the machine, and only once checkpoint 50 is committed: on a loaded CI
    machine its async save can still be running at step 70, and a rerun would then start from scratch."""
    workdir = tmp_path_factory.mktemp("goodput") / "run"
    args = ["--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.total_steps=160",
            "--config.checkpoint_every=50", "--config.log_every=10", "--config.eval_every=50"]
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.main", *args, "--config.watchdog.timeout_s=3600"],
                            cwd=REPO, env={**cli_env, "JAXDIST_INJECT_STALL": "0:71"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, reached, first_wall = workdir / goodput.FILE, 0, None
    while proc.poll() is None and time.monotonic() < started + 300:
        try:
            reached = json.loads(path.read_text())["attempts"][-1]["reached_step"]
        except (OSError, ValueError):
            pass
        if reached >= 70 and first_wall is None:
            first_wall = time.monotonic() - started  # the attempt's last record; the stall after it is not timed
        if first_wall is not None and (workdir / "checkpoints" / "50").is_dir():  # Orbax renames it when committed
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert reached == 70, reached
    started = time.monotonic()
    result = run_cli(cli_env, *args)
    second_wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 50" in result.stderr, result.stderr[-3000:]
    return json.loads(path.read_text()), (first_wall, second_wall), result.stderr


def test_each_attempts_phases_sum_to_its_wall_time(killed_and_resumed):
    report, walls, _ = killed_and_resumed
    first, second = report["attempts"]
    for attempt, measured in zip((first, second), walls):
        seconds = attempt["seconds"]
        assert sum(seconds.values()) == pytest.approx(attempt["wall_s"])
        assert abs(seconds["unaccounted"]) <= 0.02 * attempt["wall_s"], seconds  # every phase is timed
        assert 0.8 * measured <= attempt["wall_s"] <= measured  # from process start, less interpreter start-up
        assert all(seconds[c] > 0 for c in ("init", "compile", "step", "log")), seconds
    assert first["seconds"]["eval"] > 0 and second["seconds"]["eval"] > 0  # evals at 50 and at 100, 150, 160
    assert first["seconds"]["checkpoint"] > 0 and second["seconds"]["checkpoint"] > 0


def test_a_restart_adds_the_steps_it_recomputes(killed_and_resumed):
    report, _, log = killed_and_resumed
    first, second = report["attempts"]
    assert (first["first_step"], second["first_step"], second["reached_step"]) == (0, 50, 160)
    lost = second["lost_to_restarts"]
    assert lost["steps"] == first["reached_step"] - 50  # as of the killed attempt's last log point
    busy = first["seconds"]["step"] + first["seconds"]["data_wait"]
    assert lost["seconds"] == pytest.approx(busy * lost["steps"] / first["reached_step"])
    total = report["total"]
    assert total["seconds"]["lost_to_restarts"] == pytest.approx(lost["seconds"])
    assert total["wall_s"] == pytest.approx(first["wall_s"] + second["wall_s"])
    assert sum(total["seconds"].values()) == pytest.approx(total["wall_s"])
    assert goodput.summary(total) in log  # the summary line, from the same figures
