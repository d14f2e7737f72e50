"""The command line as a user runs it: the offline default run, eval mode and resume (bad input:
tests/test_bad_input.py)."""
import json
import shutil

import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, cli_env):
    """The README's offline default job, shortened to a test-sized budget, as after a plain `pip install .`."""
    workdir = tmp_path_factory.mktemp("digits")
    result = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}",
                     "--config.total_steps=300", "--config.eval_every=150", "--config.checkpoint_every=150",
                     core_only=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_default_digits_run_reaches_97_percent(default_run):
    workdir, result = default_run
    evals = [r for r in _records(workdir) if r["split"] == "eval"]
    assert evals[-1]["step"] == 300 and evals[-1]["examples"] == 360  # the whole test split, once
    assert evals[-1]["accuracy"] >= 0.97, evals[-1]
    assert "done: 300 steps" in result.stderr


def test_run_writes_metrics_tensorboard_and_checkpoints(default_run):
    workdir, result = default_run
    train = [r for r in _records(workdir) if r["split"] == "train"]
    assert [r["step"] for r in train] == [100, 200, 300]
    assert all({"loss", "accuracy", "images_per_s", "input_wait_ms"} <= set(r) for r in train)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["150", "300"]
    assert "img/s" in result.stderr and "ETA" in result.stderr


def test_run_writes_the_parallel_report(default_run):
    """workdir/parallel_report.json (parallel/report.py) and its table in the log, for the data=8 default run."""
    workdir, result = default_run
    report = json.loads((workdir / "parallel_report.json").read_text())
    assert report["mesh"]["data"] == 8 and report["bytes_per_device"]["params"] > 0
    assert report["bytes_per_device"]["total"] > report["bytes_per_device"]["temp"] > 0
    assert [(r["kind"], r["axes"]) for r in report["collectives"]] == [("all-reduce", ["data"])]
    assert report["model_flops_per_step"] > report["flops_per_step_per_device"] > 0
    assert report["peak_flops_per_s_per_device"] is None  # CPU: no MFU rather than an invented peak
    assert "all-reduce" in result.stderr and "GFLOP per device" in result.stderr


def test_eval_mode_reports_the_latest_checkpoint(default_run, cli_env):
    """In eval.jsonl: the training log (metrics.jsonl) stays one row per step of training."""
    workdir, _ = default_run
    training_log = (workdir / "metrics.jsonl").read_bytes()
    result = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}", "--mode=eval")
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    assert row["step"] == 300 and row["accuracy"] >= 0.97 and row["examples"] == 360
    assert (workdir / "metrics.jsonl").read_bytes() == training_log


def test_rerun_resumes_from_the_latest_checkpoint(default_run, cli_env, tmp_path):
    """A longer rerun on a copy of the workdir continues from step 300 instead of starting over."""
    workdir, _ = default_run
    resumed = tmp_path / "run"
    shutil.copytree(workdir, resumed)
    result = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={resumed}",
                     "--config.total_steps=400", "--config.eval_every=150", "--config.checkpoint_every=150")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from step 300" in result.stderr
    new_train = [r["step"] for r in _records(resumed) if r["split"] == "train"][3:]
    assert new_train == [400]
