"""Checkpoints and fault tolerance: cross-mesh restore, exact resume after SIGTERM, SIGKILL mid-save,
the non-finite guard, retention, init_from, eval of any kept step, and refusals of bad checkpoints."""
import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_dp
from jaxdist.config import base_config
from jaxdist.data import pipeline, sources
from jaxdist.errors import ConfigError
from jaxdist.train import checkpoint, loop
from jaxdist.train.window import NonFiniteError
from tests.conftest import REPO
from tests.helpers import run_cli, tiny_config


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _run(config, workdir):
    return loop.train_and_evaluate(config, str(workdir))


def _params(config, workdir, step=None, devices=None):
    exp = loop.build_experiment(config, devices)
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", 1, read_only=True)
    state, _ = ckpt.restore(step or ckpt.latest_step(), exp.abstract_state, exp.shardings)
    ckpt.close()
    return state, exp


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """ResNet-8 state (params, batch statistics, optimizer state) saved from a data=8 mesh after 3 steps."""
    workdir = tmp_path_factory.mktemp("resnet")
    config = tiny_config("resnet8", dict(data=8), total_steps=3, checkpoint_every=3, eval_every=3)
    _run(config, workdir)
    return config, workdir


@pytest.mark.parametrize("mesh", [dict(data=4, model=2), dict(fsdp=8), "one device"])
def test_restore_onto_another_mesh_lands_in_its_shardings(resnet_checkpoint, mesh):
    config, workdir = resnet_checkpoint
    saved, _ = _params(config, workdir)
    one = mesh == "one device"
    target = tiny_config("resnet8", {} if one else mesh)
    restored, exp = _params(target, workdir, devices=jax.devices()[:1] if one else None)
    assert int(restored["step"]) == 3 and restored["batch_stats"]  # batch statistics come back too
    for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(exp.shardings)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding == sharding  # placed straight into the new layout
    if not one:  # the layout really changed: some params are split differently than when saved
        assert any(a.sharding.spec != b.sharding.spec
                   for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(saved["params"])))


def _cli_args(workdir, *extra):
    return ["--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.total_steps=60",
            "--config.log_every=5", "--config.eval_every=60", "--config.checkpoint_every=30",
            "--config.schedule.warmup_steps=5", *extra]


def test_sigterm_saves_and_a_rerun_resumes_exactly(tmp_path, cli_env):
    straight = tmp_path / "straight"
    assert run_cli(cli_env, *_cli_args(straight)).returncode == 0

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.main", *_cli_args(stopped)], cwd=REPO, env=cli_env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 10/60" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 75, "".join(lines) + rest
    final_line = rest.strip().splitlines()[-1]
    assert final_line.startswith("jaxdist: stopped by a signal after step ") and "rerun the same command" in final_line
    stop_step = int(final_line.split("after step ")[1].split(";")[0])
    assert 10 <= stop_step < 60

    resumed = run_cli(cli_env, *_cli_args(stopped))
    assert resumed.returncode == 0 and f"resumed from step {stop_step}" in resumed.stderr
    config = digits_dp.get_config()
    config.total_steps, config.schedule.warmup_steps = 60, 5
    a, _ = _params(config, straight)
    b, _ = _params(config, stopped)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise: same batches, same updates


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path, cli_env):
    """Kill -9 the moment Orbax's temporary directory for a step appears; the rerun must resume from a
    finished step (never the half-written one) and complete."""
    workdir = tmp_path / "run"
    args = _cli_args(workdir, "--config.checkpoint_every=1", "--config.total_steps=400")
    proc = subprocess.Popen([sys.executable, "-m", "jaxdist.main", *args], cwd=REPO, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = workdir / "checkpoints"
    deadline = time.monotonic() + 240
    killed_during_write = False
    while time.monotonic() < deadline and proc.poll() is None:
        finished = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        writing = list(ckpts.glob("*.orbax-checkpoint-tmp*")) if ckpts.exists() else []
        if finished and writing:
            proc.kill()
            killed_during_write = True
            break
        time.sleep(0.001)
    proc.wait()
    assert killed_during_write, "no save in progress was caught"
    steps = sorted(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert steps
    # A short rerun (total_steps may change on resume): enough to show it starts from a finished step.
    result = run_cli(cli_env, *args, f"--config.total_steps={steps[-1] + 10}", "--config.checkpoint_every=1000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from step {steps[-1]}" in result.stderr


@pytest.fixture
def digits_with_a_nan(monkeypatch):
    """Digits whose record at stream position 4 * 16 (the first row of step 5) is NaN."""
    real_load = sources.load

    def load(data_config, *args, **kwargs):
        data = real_load(data_config, *args, **kwargs)
        images = data.train.source.images.copy()
        images[pipeline.epoch_permutation(0, 0, data.train.size)[4 * 16]] = np.nan
        source = sources.ArraySource(images, data.train.source.labels)
        return sources.Dataset(sources.Split(source, data.train.transform), data.test, data.num_classes,
                               data.class_names, data.image_shape)

    monkeypatch.setattr(sources, "load", load)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(digits_with_a_nan, tmp_path):
    config = tiny_config(mesh=dict(data=8), total_steps=8, log_every=2, checkpoint_every=2, eval_every=8)
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient at step 5; .* latest checkpoint \\(step 4\\)"):
        _run(config, tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()) == [2, 4]
    state, _ = _params(config, tmp_path)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))


def test_nan_policy_skip_counts_the_step_and_finishes(digits_with_a_nan, tmp_path):
    config = tiny_config(mesh=dict(data=8), total_steps=8, log_every=2, checkpoint_every=8, eval_every=8,
                         nan_policy="skip")
    result = _run(config, tmp_path)
    train = [r for r in _records(tmp_path) if r["split"] == "train"]
    assert [r["skipped_updates"] for r in train] == [0, 0, 1, 0] and np.isfinite(result["loss"])


def test_keep_the_latest_and_the_best_and_save_by_time(tmp_path):
    config = tiny_config(mesh=dict(data=8), total_steps=8, log_every=1, checkpoint_every=1, eval_every=2,
                         keep_checkpoints=2, keep_best_checkpoints=1, best_metric="loss")
    _run(config, tmp_path)
    evals = {r["step"]: r["loss"] for r in _records(tmp_path) if r["split"] == "eval"}
    best = min(evals, key=evals.get)
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit())
    assert kept == sorted({best, 7, 8})

    timed = tmp_path / "timed"
    _run(tiny_config(mesh=dict(data=8), total_steps=6, log_every=2, checkpoint_every=1000, eval_every=6,
                     checkpoint_every_seconds=1e-6), timed)
    assert sorted(int(p.name) for p in (timed / "checkpoints").glob("*") if p.name.isdigit()) == [2, 4, 6]


@pytest.mark.parametrize("best_metric, best", [("loss", 2), ("accuracy", 3)])
def test_retention_keeps_an_old_best_step_beside_the_latest_two(best_metric, best, tmp_path):
    """The best step is neither of the latest two, and the two metrics rank different steps first (lowest loss,
    highest accuracy), so LatestN alone, or the wrong direction, keeps other steps; and it stays the best
    after a resume."""
    metrics = {1: (0.9, 0.20), 2: (0.1, 0.50), 3: (0.5, 0.95), 4: (0.7, 0.40), 5: (0.6, 0.30)}
    state = {"w": jnp.arange(4.0)}
    with checkpoint.Checkpointer(str(tmp_path), 2, keep_best=1, best_metric=best_metric) as ckpt:
        for step, (loss, accuracy) in metrics.items():
            ckpt.save(step, state, base_config(), {"next": step}, metrics={"loss": loss, "accuracy": accuracy})
            ckpt.check_saves()
        assert ckpt.best_step() == best
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == sorted({best, 4, 5})
    # A resumed run (a new process, a new Checkpointer) still ranks the earlier steps by their saved metrics.
    with checkpoint.Checkpointer(str(tmp_path), 2, keep_best=1, best_metric=best_metric) as ckpt:
        for step in (6, 7):
            ckpt.save(step, state, base_config(), {"next": step}, metrics={"loss": 0.8, "accuracy": 0.1})
            ckpt.check_saves()
        assert ckpt.best_step() == best
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == sorted({best, 6, 7})


def test_eval_any_kept_step_and_refuse_others(tmp_path):
    """Evaluating kept step 2 gives what training measured at step 2, not step 4's result: restoring the wrong
    step fails. eval.jsonl gets exactly the rows the evals add."""
    config = tiny_config(mesh=dict(data=8), total_steps=4, checkpoint_every=2, eval_every=2)
    _run(config, tmp_path)
    trained = {r["step"]: r for r in _records(tmp_path) if r["split"] == "eval"}
    assert trained[2]["loss"] != trained[4]["loss"]
    for step in (2, 4):
        config.eval_step = step
        result = loop.evaluate_checkpoint(config, str(tmp_path))
        for key in ("loss", "accuracy", "examples"):
            assert result[key] == pytest.approx(trained[step][key], rel=1e-6), (step, key)
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    config.eval_step = 3
    with pytest.raises(ConfigError, match="eval_step=3 is not kept in .*; kept steps: 2, 4"):
        loop.evaluate_checkpoint(config, str(tmp_path))


def test_init_from_takes_matching_weights_and_keeps_a_new_head_fresh(tmp_path):
    source = tiny_config(mesh=dict(data=8), total_steps=2, checkpoint_every=2, eval_every=2)
    _run(source, tmp_path / "source")
    trained, _ = _params(source, tmp_path / "source")
    target = tiny_config(mesh=dict(data=4, model=2), total_steps=1, eval_every=1, checkpoint_every=1,
                         init_from=str(tmp_path / "source"), **{"model.num_classes": 3, "data.name": "synthetic",
                                                                "data.synthetic_shape": (8, 8, 1)})
    exp = loop.build_experiment(target)
    fresh = loop.init_state(exp)
    loaded = checkpoint.load_weights(target.init_from, fresh)
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"], trained["params"]["conv1"]["kernel"])
    assert loaded["params"]["conv1"]["kernel"].sharding == exp.shardings["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    assert int(loaded["step"]) == 0  # a new run: step and optimizer state start fresh
    with pytest.raises(ConfigError, match="has no checkpoints"):
        checkpoint.load_weights(str(tmp_path / "nowhere"), fresh)


def test_init_from_starts_the_loop_from_those_weights_and_is_ignored_when_resuming(tmp_path, caplog):
    """Through the loop: the first state holds the source's weights at step 0; a rerun that resumes never
    reads init_from (here a path that does not exist, which a fresh start refuses) and says so."""
    source = tiny_config(mesh=dict(data=8), total_steps=2, checkpoint_every=2, eval_every=2)
    _run(source, tmp_path / "source")
    trained, _ = _params(source, tmp_path / "source")
    target = tiny_config(mesh=dict(data=8), total_steps=2, checkpoint_every=2, eval_every=2,
                         init_from=str(tmp_path / "source"))
    state = loop.init_state(loop.build_experiment(target), target.init_from)
    np.testing.assert_array_equal(state["params"]["conv1"]["kernel"], trained["params"]["conv1"]["kernel"])
    assert int(state["step"]) == 0
    _run(target, tmp_path / "run")
    target.total_steps, target.init_from = 3, str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="has no checkpoints"):
        _run(target, tmp_path / "fresh")
    caplog.set_level(logging.INFO, logger="absl")
    _run(target, tmp_path / "run")
    assert "resumed from step 2" in caplog.text and "init_from is ignored when resuming" in caplog.text


def test_resume_refuses_a_workdir_of_another_config(resnet_checkpoint, cli_env, tmp_path):
    _, workdir = resnet_checkpoint
    config = tiny_config("cnn", dict(data=8), total_steps=6)
    with pytest.raises(ConfigError, match=r"was written by a different config \(model.name 'resnet8' -> 'cnn'\); "
                                          r"use a new --workdir, or --config.init_from="):
        _run(config, workdir)


@pytest.mark.parametrize("mesh", [dict(data=4, model=2), dict(fsdp=8)])
def test_eval_and_resume_of_a_resnet_on_another_mesh(resnet_checkpoint, tmp_path, mesh):
    """ResNet blocks are a list: int keys in the model's state, strings in the checkpoint. Evaluating on
    another mesh gives the saved run's test metrics; resuming there trains on."""
    config, workdir = resnet_checkpoint
    saved = [r for r in _records(workdir) if r["split"] == "eval"][-1]
    target = tiny_config("resnet8", mesh, total_steps=3)
    result = loop.evaluate_checkpoint(target, str(workdir))
    assert result["accuracy"] == saved["accuracy"] and result["loss"] == pytest.approx(saved["loss"], rel=1e-5)
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    _run(tiny_config("resnet8", mesh, total_steps=4, checkpoint_every=4, eval_every=4), resumed)
    assert [r["step"] for r in _records(resumed) if r["split"] == "train"][-1] == 4


def test_shape_mismatches_name_the_arrays():
    abstract = {"params": {"head": {"kernel": jax.ShapeDtypeStruct((512, 3), np.float32)},
                           "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 1, 8), np.float32)}}}
    saved = {"params/head/kernel": (512, 10), "params/old/bias": (4,)}
    assert checkpoint.shape_mismatches(saved, abstract) == [
        "params/head/kernel: checkpoint (512, 10) vs model (512, 3)", "params/conv/kernel: not in the checkpoint",
        "params/old/bias: in the checkpoint, not in the model"]
    with_opt = {**abstract, "opt_state": ({"mu": abstract["params"]}, ())}
    assert "opt_state/1: checkpoint (7,) vs model (512, 3)" in checkpoint.shape_mismatches(
        {**saved, "opt_state/0": (3, 3, 1, 8), "opt_state/1": (7,)}, with_opt)  # by position: conv, head


def test_corrupt_checkpoint_is_one_line_exit_2_and_nothing_is_deleted(tmp_path, cli_env):
    workdir = tmp_path / "run"
    args = _cli_args(workdir, "--config.total_steps=8", "--config.checkpoint_every=8", "--config.eval_every=8")
    assert run_cli(cli_env, *args).returncode == 0
    for f in (workdir / "checkpoints" / "8" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncate every array data file
    before = sorted(str(p) for p in workdir.rglob("*"))
    result = run_cli(cli_env, *_cli_args(workdir, "--config.total_steps=16", "--config.checkpoint_every=8",
                                         "--config.eval_every=8"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("jaxdist:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"jaxdist: error: checkpoint {workdir}/checkpoints/8 cannot be read") and \
        "nothing was deleted" in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(str(p) for p in workdir.rglob("*")) == before
