"""The command line as a user runs it: bad input, the offline default run, eval mode and resume."""
import json
import shutil

import pytest

from tests.helpers import run_cli


BAD_INPUTS = {
    "mesh product": (["--config.mesh.data=3", "--config.mesh.model=2"], "uses 6 devices but 8 are available"),
    "mesh -1 does not divide": (["--config.mesh.model=3"], "does not divide the 8 available"),
    "batch not divisible": (["--config.batch_size=100"], "batch_size=100 is not divisible by the 8 batch shards"),
    "unknown model": (["--config.model.name=vgg"], "unknown model.name 'vgg'; valid: cnn,"),
    "unknown dataset": (["--config.data.name=imagenet"], "unknown data.name 'imagenet'; valid:"),
    "unknown optimizer": (["--config.optimizer.name=rmsprop"], "unknown optimizer.name 'rmsprop'; valid: sgd,"),
    "unknown schedule": (["--config.schedule.name=linear"], "unknown schedule.name 'linear'; valid:"),
    "unknown mesh axis in rules": (["--config.sharding_rules=(('batch','pipeline'),)"],
                                   "names an unknown mesh axis; valid: stage, data"),
    "unknown config field": (["--config.mesh.tensor=2"], "tensor"),
    "unknown augmentation": (["--config.data.augment=mixup"], "unknown data.augment 'mixup'; valid: none, flip,"),
    "missing image folder": (["--config.data.name=folder", "--config.data.path=/nonexistent/images"],
                             "image folder '/nonexistent/images' does not exist"),
    "tfds not prepared": (["--config.data.name=cifar10", "--config.data.tfds_data_dir=/nonexistent/tfds"],
                          "tfds dataset 'cifar10' is not prepared in /nonexistent/tfds"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_the_workdir_alone(case, cli_env, tmp_path):
    overrides, expected = BAD_INPUTS[case]
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    result = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}", *overrides, core_only=True)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxdist: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["metrics.jsonl"]
    assert (workdir / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_missing_config_file(cli_env, tmp_path):
    result = run_cli(cli_env, "--config=configs/nope.py", f"--workdir={tmp_path}", core_only=True)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxdist: error: ") and "nope.py" in lines[0], result.stderr


def test_eval_without_checkpoint(cli_env, tmp_path):
    result = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={tmp_path}", "--mode=eval")
    assert result.returncode == 2 and "no checkpoints in" in result.stderr


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
