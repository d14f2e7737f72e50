"""jaxdist.bench and the HLO collective parser it reports from."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxdist.parallel.collectives import collective_bytes, shape_bytes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_all_reduce_f32():
    hlo = ("  ROOT %all-reduce = f32[128,10]{1,0} all-reduce(%fusion), channel_id=2, "
           "replica_groups=mesh['axis_0'=8] {'axis_0'}, use_global_device_ids=true, to_apply=%region_0.0")
    got = collective_bytes(hlo)
    assert got["all-reduce"] == 128 * 10 * 4
    assert got["total"] == 128 * 10 * 4
    assert got["all-gather"] == got["reduce-scatter"] == got["all-to-all"] == got["collective-permute"] == 0


def test_tuple_all_reduce_sums_elements():
    hlo = ("  %all-reduce.3 = (f32[3,3,16,32]{3,2,1,0}, f32[32]{0}, s32[]) all-reduce(%a, %b, %c), "
           "channel_id=5, to_apply=%add")
    assert collective_bytes(hlo)["all-reduce"] == (3 * 3 * 16 * 32 + 32 + 1) * 4


def test_async_pair_counted_once():
    hlo = "\n".join([
        "  %all-gather-start = (f32[8,16]{1,0}, f32[64,16]{1,0}) all-gather-start(%p), dimensions={0}",
        "  %fusion.2 = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused",
        "  %all-gather-done = f32[64,16]{1,0} all-gather-done(%all-gather-start)",
        "  %cp-start = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(%y), "
        "source_target_pairs={{0,1},{1,0}}",
        "  %cp-done = f32[4]{0} collective-permute-done(%cp-start)",
    ])
    got = collective_bytes(hlo)
    assert got["all-gather"] == 64 * 16 * 4
    assert got["collective-permute"] == 4 * 4
    assert got["total"] == 64 * 16 * 4 + 16


def test_bf16_and_other_kinds():
    hlo = "\n".join([
        "  %reduce-scatter = bf16[16,64]{1,0} reduce-scatter(%g), dimensions={0}, to_apply=%add",
        "  %all-to-all = bf16[2,8]{1,0:T(8,128)(2,1)} all-to-all(%h), dimensions={0}",
        "  %fusion = bf16[16,64]{1,0} fusion(%reduce-scatter), kind=kLoop",  # uses it: not a collective
    ])
    got = collective_bytes(hlo)
    assert got["reduce-scatter"] == 16 * 64 * 2
    assert got["all-to-all"] == 2 * 8 * 2
    assert got["total"] == 16 * 64 * 2 + 32


def test_shape_bytes_scalars_and_pred():
    assert shape_bytes("f32[]") == 4
    assert shape_bytes("(pred[10]{0}, s4[3]{0})") == 10 + 2
    assert shape_bytes("f8e4m3fn[4,4]{1,0}") == 16


def _bench(*overrides, config="configs/digits_dp.py"):
    """`python -m jaxdist.bench`, as after a plain `pip install .` (tests/core_only.py)."""
    cmd = [sys.executable, str(ROOT / "tests" / "core_only.py"), "jaxdist.bench", f"--config={config}",
           "--steps=3", "--warmup=1", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def dp_result():
    return _bench("--config.log_every=4")  # log points at steps 4, 8 and 12 of the 13 (1 + 3 + 3 x 3)


def test_bench_reports_step_and_plan(dp_result):
    r = dp_result
    for key in ("model", "data_shape", "mesh", "devices", "platform", "global_batch", "dtype", "images_per_s",
                "input_images_per_s",
                "step_ms_p50", "step_ms_p90", "compile_s", "params_bytes_per_device",
                "opt_state_bytes_per_device", "collective_bytes_per_step", "bytes_per_device", "collectives",
                "flops_per_step_per_device", "model_flops_per_step", "peak_flops_per_s_per_device", "mfu"):
        assert key in r, key
    assert r["model"] == "cnn" and r["data_shape"] == [8, 8, 1]
    assert r["mesh"]["data"] == 8 and r["devices"] == 8
    assert r["step_ms_p90"] >= r["step_ms_p50"] >= r["step_ms_min"] > 0
    assert len(r["images_per_s_rounds"]) == r["repeats"] == 3
    # The loop's log points run inside the timed steps, as in training, and their own cost is reported.
    assert r["log_points"] == (r["warmup"] + r["steps"] * (1 + r["repeats"])) // 4 == 3
    assert r["log_point_ms_p50"] > 0
    # The rates are what the timings say: the median round, and the batch over the median step time.
    assert r["images_per_s"] == pytest.approx(sorted(r["images_per_s_rounds"])[1], abs=0.05)
    assert r["blocked_images_per_s"] == pytest.approx(r["global_batch"] / (r["step_ms_p50"] / 1e3), rel=1e-3)
    # The default path, as jaxdist.main runs digits_dp.py: guard and gradient-norm metric on.
    assert r["extras"]["nan_guard"] and r["extras"]["grad_norm_metric"]
    # DP: the gradients (one copy of the params) are all-reduced every step.
    collective = r["collective_bytes_per_step"]
    assert collective["total"] > 0
    assert collective["all-reduce"] >= r["params_bytes_per_device"]
    # The parallel report's fields: the same all-reduce, attributed to the data axis.
    assert [(c["kind"], c["axes"]) for c in r["collectives"]] == [("all-reduce", ["data"])]
    assert r["bytes_per_device"]["params"] == r["params_bytes_per_device"] and r["mfu"] is None  # CPU: no peak


def test_step_bench_takes_a_training_command_with_its_data_location():
    """The step benchmark runs on synthetic data of the dataset's shape, so the real data's location in a
    pasted training command is not needed (and not refused as unread)."""
    r = _bench("--config.data.path=/data/not/read/by/the/step/bench", "--config.model.name=cnn",
               "--config.batch_size=16", config="configs/cifar_dp.py")
    assert r["data_shape"] == [32, 32, 3] and r["global_batch"] == 16


def test_bench_fsdp_shards_params(dp_result):
    fsdp = _bench("--config.mesh.data=1", "--config.mesh.fsdp=-1")
    assert fsdp["mesh"]["fsdp"] == 8
    assert fsdp["params_bytes_per_device"] < dp_result["params_bytes_per_device"]
    assert fsdp["opt_state_bytes_per_device"] < dp_result["opt_state_bytes_per_device"]
    assert fsdp["collective_bytes_per_step"]["all-gather"] > 0


def test_bench_bad_config_is_one_line():
    cmd = [sys.executable, "-m", "jaxdist.bench", "--config=configs/digits_dp.py", "--config.mesh.data=3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("jaxdist: error: mesh ")
    assert proc.stdout == ""


def test_bench_refuses_a_missing_config_file_in_one_line():
    """bench shares main's entry sequence (jaxdist.cli.start), config-file check included."""
    cmd = [sys.executable, "-m", "jaxdist.bench", "--config=configs/no_such_config.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "jaxdist: error: config file 'configs/no_such_config.py' does not exist; pass one of configs/*.py, "
        "e.g. --config=configs/digits_dp.py"]


@pytest.mark.parametrize("flags, message", [
    (["--profile_dir={tmp}/a_file/trace"], "--profile_dir={tmp}/a_file/trace: cannot write there (Not a directory); "
                                           "give a writable directory"),
    (["--profile_dir={tmp}/trace", "--data_only"], "--profile_dir traces the train step and --data_only times the "
                                                   "input pipeline alone: pass one of them"),
], ids=["not_a_directory", "with_data_only"])
def test_bench_refuses_a_profile_it_cannot_take_before_running(flags, message, tmp_path):
    (tmp_path / "a_file").write_text("kept")
    cmd = [sys.executable, "-m", "jaxdist.bench", "--config=configs/digits_dp.py",
           *(f.format(tmp=tmp_path) for f in flags)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.strip().splitlines() == ["jaxdist: error: " + message.format(tmp=tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "kept"


def test_bench_data_only_times_the_input_pipeline():
    r = _bench("--data_only", "--config.data.augment=crop_flip")
    assert r["benchmark"] == "input" and r["data"] == "digits" and r["augment"] == "crop_flip"
    assert r["data_shape"] == [8, 8, 1] and r["global_batch"] == 128 and r["images_per_s"] > 0


def test_the_input_rate_comes_through_the_configured_transforms():
    """bench's input_images_per_s times batches built by the experiment's pipeline: with a transform that sleeps
    20 ms a batch in the one reader thread, 10 timed batches of 16 take at least 9 x 20 ms (the first may be
    ready when the clock starts), so at most 889 images/s; a timer of a reused batch, or of nothing, gives
    far more."""
    import dataclasses
    import time

    from jaxdist import bench
    from jaxdist.data import sources
    from jaxdist.train import loop
    from tests.helpers import tiny_config

    class SlowTransform(sources.ImageTransform):
        def batch(self, images, keys):
            time.sleep(0.02)
            return super().batch(images, keys)

    config = tiny_config(mesh=dict(data=8), **{"data.num_threads": 1})
    exp = loop.build_experiment(config)
    train = exp.data.train
    slow = sources.Split(train.source, SlowTransform(config.data, train.transform.mean, train.transform.std, True))
    rate = bench.input_rate(dataclasses.replace(exp, data=dataclasses.replace(exp.data, train=slow)), 10, 1)
    assert 0 < rate <= 10 * config.batch_size / (9 * 0.02)
