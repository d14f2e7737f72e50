"""Every experiments/ script that tests/test_experiments.py does not run, in its tiny mode (its own size
flags, or --smoke where it had none), as a subprocess from the repository root the way its docstring says
to run it. Each case checks what the script prints or writes, recomputing what can be recomputed, so a
script broken by a change in jaxdist (a renamed function, a changed output) fails here.

The shell scripts (default_costs.sh, gpu_bench.sh, gpu_deps.sh, gpu_main.sh, gpu_wheels.sh, host_memory.sh,
input_speed.sh, overhead.sh, rnn_speed.sh, startup_speed.sh, strategies.sh, sync_modes.sh) only chain these scripts,
pip and jaxdist.bench/main at full size; they are covered by the scripts they call (below; host_memory.sh's A/B by
tests/test_host_memory.py) and by bash -n and shellcheck in tests/test_deploy.py. dump_step_hlo.sh,
bench_ab.sh and xla_flags_ab.sh have tests of their own (below).
"""
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _load(path):
    """A script of experiments/ as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the checks, one per script: (proc, tmp_path) -> None -------------------------------------------

BENCH_TINY = ["--config=configs/digits_dp.py", "--config.cpu_devices=1", "--config.mesh.data=1", "--steps=2",
              "--warmup=1", "--repeats=1"]


def check_bench_without(proc, tmp):
    (result,) = _json_lines(proc.stdout)  # one jaxdist.bench line: the patched step compiled and ran
    assert (result["model"], result["devices"], result["global_batch"], result["steps"]) == ("cnn", 1, 128, 2)
    assert result["images_per_s"] > 0 and len(result["images_per_s_rounds"]) == 1
    assert math.isfinite(result["loss"]) and 0 < result["loss"] < 10  # ~ln(10) for 10 classes at init


def check_bench_without_unknown(proc, tmp):
    assert proc.stderr.strip().splitlines()[-1] == ("unknown extra 'gradnorm'; valid: accuracy, inflight, "
                                                    "default_forms, cuda_forms (or several, joined by +)")


def check_cond_dispatch(proc, tmp):
    lines = _json_lines(proc.stdout)
    assert [(r["form"], r["round"], r["size"], r["steps"]) for r in lines] == [
        (form, 1, 64, 5) for form in ("cond", "select", "ungated")]
    assert all(0 < r["dispatch_ms"] <= r["total_ms"] and r["backend"] == "cpu" for r in lines)


def check_bf16_grad_error(proc, tmp):
    (line,) = proc.stdout.strip().splitlines()
    found = re.fullmatch(r"init weights, batch 0: \|g_bf16 - g_f32\| / \|g_f32\| = (\S+), "
                         r"median elementwise relative error (\S+)", line)
    assert found, line
    norm, median = map(float, found.groups())
    # bfloat16's unit roundoff is 2^-9 = 2.0e-3 (docs/parallelism.md measured 1.9e-3): an all-reduce that
    # stayed float32 gives 0, a wrong one far more.
    assert 2e-4 < norm < 2e-2 and 2e-4 < median < 2e-2


def check_checkpoint_verify_cost(proc, tmp):
    (r,) = _json_lines(proc.stdout)
    assert r["saves"] == 2
    assert r["state_mb"] == round(4 * 64 * 100 * 4 / 1e6, 1)  # 2 arrays of 64x100 float32 and their momentum
    assert r["step_files"] >= 1 and r["step_mb"] >= 0.9 * r["state_mb"]  # the arrays are on disk
    for key in ("save_call_s", "background_write_s", "checksums_s", "verify_s", "restore_s"):
        assert 0 <= r[key] < 60, key
    assert r["check_saves_us"]["idle"] > 0
    assert r["filesystem"] and r["machine"] and "jax" in r["versions"]


def check_costs_table(proc, tmp):
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == ["| variant | images/s (best round) | vs default | temp MB per device |", "|---|---|---|---|"]
    # Best rounds 200, 210 and 150, against the default's 200; each run's temp bytes as last seen.
    assert lines[2:] == ["| default 8dev | 200 | +0.0% | 24.4 |", "| no_nan_guard 8dev | 210 | +5.0% | 24.0 |",
                         "| bare 8dev | 150 | -25.0% | 12.5 |"]


COSTS_RECORDS = [{"run": run, "images_per_s": rate, "temp_bytes_per_device": temp} for run, rate, temp in [
    ("default 8dev", 180.0, 24.4e6), ("no_nan_guard 8dev", 210.0, 24.0e6), ("bare 8dev", 150.0, 12.5e6),
    ("default 8dev", 200.0, 24.4e6), ("no_nan_guard 8dev", 190.0, 24.0e6)]]


def check_depthwise_conv_speed(proc, tmp):
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["grouped", "shifted", "max difference of outputs"]
    for line in lines[:2]:
        assert re.fullmatch(r"\w+: \d+\.\d\d s per gradient", line), line
    assert float(lines[2].split(":")[1]) < 1e-4  # "Outputs equal": the shifted form computes the same conv


def check_hybrid_rules(proc, tmp):
    rows = _json_lines(proc.stdout)
    assert [(r["rules"], r["mesh"]) for r in rows] == [("default rules", dict(data=2, fsdp=2, model=2)),
                                                       ("default rules", dict(fsdp=8))]
    for r in rows:
        moved = r["collective_mib_per_step"]
        assert moved and all(v > 0 for v in moved.values()), r  # every sharded step moves some bytes
    assert "all-gather" in rows[1]["collective_mib_per_step"]  # FSDP gathers its parameters


def check_loop_matmul_threads(proc, tmp):
    rows = _json_lines(proc.stdout)
    shapes = ["in_loop_28x(128x128x512)", "in_loop_28x(256x128x512)", "in_loop_28x2_independent(128x128x512)",
              "one_matmul_(3584x128x512)"]
    cores = len(os.sched_getaffinity(0))
    assert [(r["cores"], r["shape"]) for r in rows] == [(cores, s) for s in shapes] + [(1, s) for s in shapes]
    assert all(r["ms"] > 0 for r in rows)


def check_mesh_drift(proc, tmp):
    rows = _json_lines(proc.stdout)
    assert [r["mesh"] for r in rows] == [dict(data=8), dict(data=2, fsdp=2, model=2)]
    for r in rows:
        assert len(r["rel_diff_per_step"]) == 3 and r["max_rel_diff"] == max(r["rel_diff_per_step"])
        assert r["max_rel_diff"] < 1e-5  # the CNN at lr 0.001: float32 reassociation only


def check_rnn_collectives(proc, tmp):
    (row,) = _json_lines(proc.stdout)
    # Data parallelism: the one gradient all-reduce, however many time steps (tests/test_rnn_steps.py).
    assert row == {"mesh": {"data": 8}, "T=8": {"all-reduce": 1}, "T=16": {"all-reduce": 1}, "per_time_step": 0}


def check_overhead_table(proc, tmp):
    lines = proc.stdout.strip().splitlines()
    assert lines[1] == "|---|---|---|---|---|---|---|"
    # Sorted by model, then most devices first; best rounds; a runner not run shows nan.
    assert lines[2:] == ["| cnn | 8 | 1000 | 1100 | 1050 | **0.95** | 30.0 / 20.0 |",
                         "| cnn | 1 | 400 | 410 | 390 | **1.03** | 10.0 / 9.0 |",
                         "| resnet20 | 8 | 100 | nan | 98 | **1.02** | 5.0 / 0.0 |"]


OVERHEAD_RECORDS = [
    {"run": "jaxdist_default cnn 1dev", "images_per_s": 400.0, "temp_bytes_per_device": 10e6},
    {"run": "jaxdist_bare cnn 1dev", "images_per_s": 410.0, "temp_bytes_per_device": 9e6},
    {"run": "handwritten cnn 1dev", "examples_per_s": 390.0},
    {"run": "jaxdist_default cnn 8dev", "images_per_s": 900.0, "temp_bytes_per_device": 30e6},
    {"run": "jaxdist_default cnn 8dev", "images_per_s": 1000.0, "temp_bytes_per_device": 30e6},
    {"run": "jaxdist_bare cnn 8dev", "images_per_s": 1100.0, "temp_bytes_per_device": 20e6},
    {"run": "handwritten cnn 8dev", "examples_per_s": 1050.0},
    {"run": "handwritten cnn 8dev", "examples_per_s": 1000.0},
    {"run": "jaxdist_default resnet20 8dev", "images_per_s": 100.0, "temp_bytes_per_device": 5e6},
    {"run": "handwritten resnet20 8dev", "examples_per_s": 98.0},
]


def check_partitioner_check(proc, tmp):
    (r,) = _json_lines(proc.stdout)
    assert (r["model"], r["partitioner"], r["mesh"]) == ("cnn", "gspmd", dict(data=2, fsdp=2, model=2))
    assert r["max_rel_grad_error"] < 1e-5  # docs/numerics.md: 4.6e-7 under GSPMD (Shardy: 0.80)


def check_plan_vs_bench(proc, tmp):
    plan, *benches = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    rows = [r for r in plan["rows"] if not r["skipped"]]
    assert [r["name"] for r in rows] == ["data=2", "fsdp=2"] or [r["name"] for r in rows] == ["fsdp=2", "data=2"]
    assert [b["mesh"] for b in benches] == [r["mesh"] for r in rows] and all(b["steps"] == 2 for b in benches)
    out = proc.stdout.strip().splitlines()
    m = plan["machine"]
    assert out[0] == (f"calibrated: {m['flops_per_s'] / 1e9:.3g} GFLOP/s per device, "
                      f"{m['intra_host_bytes_per_s'] / 1e9:.3g} GB/s, {m['latency_s'] * 1e6:.3g} us per collective")
    predicted = [1e3 * r["predicted_step_s"] for r in rows]
    measured = [b["step_ms_p50"] for b in benches]
    rank = lambda values: [sorted(values).index(v) + 1 for v in values]  # noqa: E731 (no ties in two timings)
    errors = []
    for line, row, p, q, b, rp, rq in zip(out[2:], rows, predicted, measured, benches, rank(predicted), rank(measured)):
        name, compute, comm, pred, p50, best, error, rank_p, rank_q = line.split()
        assert name == row["name"]
        assert float(compute) == pytest.approx(1e3 * row["compute_s"], abs=0.051)
        assert float(comm) == pytest.approx(1e3 * row["comm_s"], abs=0.051)
        assert float(pred) == pytest.approx(p, abs=0.051) and float(p50) == pytest.approx(q, abs=0.051)
        assert float(best) == pytest.approx(b["step_ms_min"], abs=0.051) and b["step_ms_min"] <= q
        assert float(error.rstrip("%")) == pytest.approx(100 * (p - q) / q, abs=0.051)
        assert (int(rank_p), int(rank_q)) == (rp, rq)
        errors.append(abs(p - q) / q)
    d2 = sum((a - b) ** 2 for a, b in zip(rank(predicted), rank(measured)))
    assert out[-1] == (f"Spearman rank correlation {1 - 6 * d2 / 6:.2f} over 2 meshes; "
                       f"mean |error| {sum(errors) / 2:.1%}")


def check_pointwise_conv_repro(proc, tmp):
    errors = {}
    for line in proc.stdout.strip().splitlines():
        found = re.fullmatch(r"(\dx\d) conv, (GSPMD|Shardy): max error (\S+)", line)
        assert found, line
        errors[found[1], found[2]] = float(found[3])
    assert list(errors) == [("1x1", "GSPMD"), ("1x1", "Shardy"), ("3x3", "GSPMD"), ("3x3", "Shardy")]
    assert errors["3x3", "GSPMD"] < 1e-4 and errors["3x3", "Shardy"] < 1e-4
    # The XLA bug still reproduces under the pinned jaxlib (~20). If this fails after a jax upgrade, XLA
    # fixed it: update docs/parallelism.md, and models/convmixer.py may use a 1x1 conv again.
    assert errors["1x1", "GSPMD"] > 1 and errors["1x1", "Shardy"] > 1


def check_step_cost(proc, tmp):
    jaxdist, handwritten, ratios = _json_lines(proc.stdout)
    assert (jaxdist["side"], handwritten["side"]) == ("jaxdist", "handwritten")
    assert ratios["model"] == "cnn" and ratios["devices"] == 1
    keys = ("flops", "bytes_accessed", "temp_bytes")
    assert ratios["jaxdist / handwritten"] == {k: round(jaxdist[k] / handwritten[k], 4) for k in keys}
    assert all(jaxdist[k] > 0 and handwritten[k] > 0 for k in keys)
    # The same model, batch and optimizer: docs/benchmarks.md measured 1.001 (cnn, 1 device).
    assert 0.95 < ratios["jaxdist / handwritten"]["flops"] < 1.05
    # --hlo: each side's own compiled step; only jaxdist's has the NaN guard's conditional.
    texts = {side: (tmp / f"{side}.hlo").read_text() for side in ("jaxdist", "handwritten")}
    assert all(t.startswith("HloModule") and "ENTRY" in t for t in texts.values())
    assert " conditional(" in texts["jaxdist"] and " conditional(" not in texts["handwritten"]


def check_write_png_folder(proc, tmp):
    from PIL import Image
    import numpy as np
    root = tmp / "pngs"
    assert proc.stdout.strip() == f"wrote 6 images to {root}"
    assert sorted(p.name for p in root.iterdir()) == ["class00", "class01"]
    for label in range(2):
        files = sorted((root / f"class{label:02d}").iterdir())
        assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
        for f in files:
            pixels = np.asarray(Image.open(f))
            assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
            assert (pixels[:4] == 25 * label).all()  # the class-coloured stripe


HAS_TORCH = importlib.util.find_spec("torch") is not None


def check_bench_lstm_torch(proc, tmp):
    if not HAS_TORCH:  # not a dependency of jaxdist: one line that says what to install, no traceback
        assert proc.returncode == 1 and proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert "PyTorch" in line and "pip install torch" in line
        return
    (r,) = _json_lines(proc.stdout)
    assert (r["framework"], r["model"], r["global_batch"], r["steps"]) == ("torch", "nn.LSTM 2x8", 8, 2)
    assert r["step_ms_min"] <= r["step_ms_p50"]
    assert r["sequences_per_s"] == pytest.approx(8e3 / r["step_ms_p50"], rel=1e-2)  # the p50 is rounded to 1 us
    assert math.isfinite(r["loss"])


def check_first_save_cost(proc, tmp):
    default, ours = _json_lines(proc.stdout)
    assert (default["handler"], ours["handler"]) == ("orbax default", "jaxdist")
    assert {default["model"], ours["model"]} == {"cnn"} and default["devices"] == ours["devices"] == 8
    # Orbax's default compiles a slice per array and device at the first save (7.6 s against 0.1 s measured).
    assert default["first_save_blocking_s"] > ours["first_save_blocking_s"]
    assert all(0 < r[f"{n}_save_blocking_s"] < 120 for r in (default, ours) for n in ("first", "second"))


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def check_predict_speed(proc, tmp):
    (r,) = _json_lines(proc.stdout)
    assert (r["model"], r["images"], r["image_shape"], r["devices"], r["batch"]) == ("cnn", 40, [8, 8, 1], 1, 256)
    records = [json.loads(line) for line in (tmp / "ps" / "cnn" / "preds.jsonl").read_text().splitlines()]
    assert len(records) == 40 and all(len(x["top_k"]) == 5 for x in records)  # jaxdist.predict's defaults
    assert r["limit"] == ("input" if r["input_only_images_per_s"] < r["model_only_images_per_s"] else "model")
    assert r["predict_wall_s"] > 40 / r["predict_images_per_s"]  # the command took longer than its predictions


def check_goodput_split(proc, tmp):
    default, two = _json_lines(proc.stdout)
    assert (default["run"], default["attempts"], default["lost_steps"]) == ("default", 1, 0)
    assert (two["run"], two["attempts"]) == ("two_processes", 2)
    attempts = json.loads((tmp / "gs" / "two_processes" / "goodput.json").read_text())["attempts"]
    assert attempts[1]["first_step"] == 8 and two["lost_steps"] == attempts[0]["reached_step"] - 8 >= 4  # killed at >= 12
    assert two["seconds"]["lost_to_restarts"] > 0
    for row in (default, two):
        assert sum(row["seconds"].values()) == pytest.approx(row["wall_s"])
        assert abs(row["seconds"]["unaccounted"]) < 0.02 * row["wall_s"]
    table = (tmp / "gs" / "results.md").read_text()
    assert f"| two_processes | 2 | {two['wall_s']:.4g} |" in table


def check_log_point_cost(proc, tmp):
    (r,) = _json_lines(proc.stdout)
    assert (r["devices"], r["window_steps"], r["rounds"], r["platform"]) == (1, 40, 2, "cpu")
    assert r["metrics_per_step"] == 4  # loss, accuracy, grad_norm, nonfinite: the default step's
    assert r["device_get_ms"] > 0 and r["fetch_ms"] > 0
    assert r["fetch_first_ms_with_compile"] > r["fetch_ms"]  # the first read compiled the stacking program


def check_step_profile(proc, tmp):
    bench, *ops = _json_lines(proc.stdout)
    assert (bench["model"], bench["data_shape"], bench["profile"]) == ("lstm", [8, 8], {"dir": f"{tmp}/prof",
                                                                                       "steps": 2})
    assert len(list((tmp / "prof").glob("plugins/profile/*/perfetto_trace.json.gz"))) == 1
    assert ops and [r["ms_per_step"] for r in ops] == sorted((r["ms_per_step"] for r in ops), reverse=True)
    for r in ops:  # per step: each op's total time over its 2 traced steps, / 2
        assert r["ms_per_step"] == pytest.approx(r["calls_per_step"] * r["us_per_call"] / 1e3, rel=0.01, abs=2e-3)
    calls = {r["op"]: r["calls_per_step"] for r in ops}
    assert not [op for op in calls if op.startswith(("while", "conditional"))]  # the kernels, not the loops
    # The recurrence's ops run once per time step (8 rows of 8 pixels), the others once per step.
    assert 8.0 in calls.values() and 1.0 in calls.values() and set(calls.values()) <= {1.0, 8.0}


# (id, arguments after `python`; {tmp} is the test's tmp_path, its input files, the check, exit code)
CASES = [
    ("bench_without_accuracy", ["experiments/bench_without.py", "accuracy", *BENCH_TINY], None, check_bench_without, 0),
    ("bench_without_inflight", ["experiments/bench_without.py", "inflight", *BENCH_TINY], None, check_bench_without, 0),
    ("bench_without_default_forms", ["experiments/bench_without.py", "default_forms", *BENCH_TINY], None,
     check_bench_without, 0),
    ("bench_without_cuda_forms_and_accuracy", ["experiments/bench_without.py", "cuda_forms+accuracy", *BENCH_TINY],
     None, check_bench_without, 0),
    ("bench_without_unknown", ["experiments/bench_without.py", "gradnorm", *BENCH_TINY], None,
     check_bench_without_unknown, 1),
    ("bf16_grad_error", ["experiments/bf16_grad_error.py", "--smoke"], None, check_bf16_grad_error, 0),
    ("cond_dispatch", ["experiments/cond_dispatch.py", "--size=64", "--steps=5", "--rounds=1"], None,
     check_cond_dispatch, 0),
    ("checkpoint_verify_cost", ["experiments/checkpoint_verify_cost.py", "--smoke", "--dir={tmp}"], None,
     check_checkpoint_verify_cost, 0),
    ("costs_table", ["experiments/costs_table.py", "{tmp}/costs.jsonl"], ("costs.jsonl", COSTS_RECORDS),
     check_costs_table, 0),
    ("depthwise_conv_speed", ["experiments/depthwise_conv_speed.py", "--smoke"], None, check_depthwise_conv_speed, 0),
    ("first_save_cost", ["experiments/first_save_cost.py", "--model=cnn"], None, check_first_save_cost, 0),
    ("goodput_split", ["experiments/goodput_split.py", "--smoke", "--out={tmp}/gs"], None, check_goodput_split, 0),
    ("hybrid_rules", ["experiments/hybrid_rules.py", "--smoke"], None, check_hybrid_rules, 0),
    ("log_point_cost", ["experiments/log_point_cost.py", "--devices=1", "--window=40", "--rounds=2"], None,
     check_log_point_cost, 0),
    ("loop_matmul_threads", ["experiments/loop_matmul_threads.py", "--smoke"], None, check_loop_matmul_threads, 0),
    ("mesh_drift", ["experiments/mesh_drift.py", "--smoke"], None, check_mesh_drift, 0),
    ("rnn_collectives", ["experiments/rnn_collectives.py", "--smoke"], None, check_rnn_collectives, 0),
    ("overhead_table", ["experiments/overhead_table.py", "{tmp}/overhead.jsonl"], ("overhead.jsonl", OVERHEAD_RECORDS),
     check_overhead_table, 0),
    ("partitioner_check", ["experiments/partitioner_check.py", "--partitioner=gspmd", "--smoke"], None,
     check_partitioner_check, 0),
    ("plan_vs_bench", ["experiments/plan_vs_bench.py", "{tmp}/out.jsonl", "--", "--config=configs/digits_dp.py",
                       "--devices=2", "--axes=data,fsdp", "--steps=2"], None, check_plan_vs_bench, 0),
    ("pointwise_conv_repro", ["experiments/pointwise_conv_repro.py"], None, check_pointwise_conv_repro, 0),
    ("predict_speed", ["experiments/predict_speed.py", "--models=cnn", "--images=40", "--out={tmp}/ps"], None,
     check_predict_speed, 0),
    ("step_profile", ["experiments/step_profile.py", "--profile_dir={tmp}/prof", "--config=configs/seqdigits_lstm.py",
                      "--config.cpu_devices=1", "--config.mesh.data=1", "--steps=2", "--warmup=1", "--repeats=1"],
     None, check_step_profile, 0),
    ("step_cost", ["experiments/step_cost.py", "--model", "cnn", "--devices", "1", "--hlo={tmp}"], None,
     check_step_cost, 0),
    ("write_png_folder", ["experiments/write_png_folder.py", "{tmp}/pngs", "--classes=2", "--per_class=3", "--size=8"],
     None, check_write_png_folder, 0),
    ("bench_lstm_torch", ["experiments/bench_lstm_torch.py", "--steps", "2", "--warmup", "1", "--batch", "8",
                          "--hidden", "8"], None, check_bench_lstm_torch, 0 if HAS_TORCH else 1),
]


# Documented as `PYTHONPATH=. python experiments/...` (they import configs/ or tests/); the others as plain
# `python experiments/...`, so they run here without it.
NEEDS_PYTHONPATH = {"experiments/bf16_grad_error.py", "experiments/mesh_drift.py", "experiments/rnn_collectives.py"}


@pytest.mark.parametrize("args, inputs, check, exit_code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_experiment_script_tiny(args, inputs, check, exit_code, tmp_path, cli_env):
    if inputs:
        _write_jsonl(tmp_path / inputs[0], inputs[1])
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    if args[0] in NEEDS_PYTHONPATH:
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, *(a.format(tmp=tmp_path) for a in args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    check(proc, tmp_path)


def test_dump_step_hlo_writes_the_steps_and_counts_their_ops(tmp_path, cli_env):
    """experiments/dump_step_hlo.sh keeps each variant's optimized train step (and only optimized HLO) and
    prints its op counts, and bench_without.py's cuda_forms compiles a GPU's forms on the CPU: no
    conditional, and the CNN's 8 gradient norms become 2 (its 7 small arrays in one reduction, fc1's
    kernel in its own), where XLA would split an unbarriered concatenation back into 8."""
    env = {**cli_env, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "experiments/dump_step_hlo.sh", str(tmp_path), "cnn", "default", "cuda_forms"],
                          cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)
    counts = {}
    for variant in ("default", "cuda_forms"):
        files = sorted((tmp_path / variant).rglob("*"))
        assert files and all(f.name.endswith("after_optimizations.txt") for f in files if f.is_file())
        (step,) = [f for f in files if "jit_train_step" in f.name]
        text = step.read_text()
        counts[variant] = text.count(" reduce("), text.count(" conditional(")
        assert f"{variant}: train step: {counts[variant][0]} reduce, {counts[variant][1]} conditional," in proc.stderr
        assert json.loads((tmp_path / f"{variant}.json").read_text())["model"] == "cnn"
    (default_reduces, default_conds), (gpu_reduces, gpu_conds) = counts["default"], counts["cuda_forms"]
    assert (default_reduces - gpu_reduces, default_conds, gpu_conds) == (6, 1, 0), counts


def test_bench_ab_runs_the_old_tree_then_this_one(cli_env):
    """OLD is the commit before jaxdist.bench reported a `profile` field: only a run of that tree lacks it."""
    env = {**cli_env, "OLD": "972d842^", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "experiments/bench_ab.sh", "2", *BENCH_TINY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _json_lines(proc.stdout)
    assert [(r["round"], r["code"], "profile" in r) for r in runs] == [
        (1, "old-972d842^", False), (1, "new", True), (2, "old-972d842^", False), (2, "new", True)]
    assert {(r["model"], r["devices"], r["steps"], r["loss"]) for r in runs} == {("cnn", 1, 2, runs[0]["loss"])}


def test_xla_flags_ab_alternates_the_default_and_the_flags(cli_env):
    env = {**cli_env, "PYTHON": sys.executable, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    flag = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    proc = subprocess.run(["bash", "experiments/xla_flags_ab.sh", "2", flag, *BENCH_TINY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _json_lines(proc.stdout)
    default, flagged = env["XLA_FLAGS"], env["XLA_FLAGS"] + " " + flag  # the caller's own flags kept in both
    assert [(r["round"], r["xla_flags"]) for r in runs] == [(1, default), (1, flagged), (2, default), (2, flagged)]
    assert {(r["model"], r["devices"], r["steps"]) for r in runs} == {("cnn", 1, 2)}


def test_compile_log_counts_programs_and_what_the_cache_saved(tmp_path, cli_env):
    """experiments/compile_log on an empty cache: two runs of one config, 2 and 3 steps long (the schedule's
    constants differ), then one with another optimizer: three train-step programs, two once the constants are
    blanked out, each compiled; the eval step is one program, compiled once and then loaded from the cache. The
    last run goes through tests/core_only.py, which wraps every import finder, as the suite's core-only runs do."""
    log = tmp_path / "compiles.jsonl"
    env = {**cli_env, "PYTHONPATH": str(REPO / "experiments" / "compile_log"), "JAXDIST_COMPILE_LOG": str(log),
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    runs = ((2, "momentum"), (3, "momentum"), (2, "adamw"))
    for n, optimizer in runs:
        start = ["tests/core_only.py", "jaxdist.main"] if optimizer == "adamw" else ["-m", "jaxdist.main"]
        proc = subprocess.run([sys.executable, *start, "--config=configs/digits_dp.py", f"--config.total_steps={n}",
                               f"--config.optimizer.name={optimizer}", f"--workdir={tmp_path / f'{optimizer}{n}'}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "compilation" not in proc.stderr.lower()  # JAX's debug lines went to the log, not to stderr
    summary = subprocess.run([sys.executable, "experiments/compile_log_summary.py", str(log)], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    result = json.loads(summary.stdout)
    assert result["steps"] == {"lowerings": 3, "programs": 3, "programs_without_constants": 2,
                               "saved_by_model": {"cnn": 1}}
    functions = result["compiles"]["by_function"]
    train, evaluate = functions["jit(train_step)"], functions["jit(eval_step)"]
    assert (train["compiled"]["count"], train["loaded"]["count"]) == (3, 0)
    assert (evaluate["compiled"]["count"], evaluate["loaded"]["count"]) == (1, 2)
    assert evaluate["loaded"]["seconds"] / 2 < evaluate["compiled"]["seconds"]  # a load is cheaper than a compile
    # Three interpreters, each named by its entry point; the test's own process runs without the log.
    assert result["processes"] == {"started": 3, "by_entry": {
        "-m jaxdist.main": {"count": 2, "started_by": {"not logged": 2}},
        "core_only.py jaxdist.main": {"count": 1, "started_by": {"not logged": 1}}}}
    # Each run's train-step compile is most of the compile phase its run.json reports, never more.
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    seconds = [line["seconds"] for line in lines if line.get("function") == "jit(train_step)"]
    reported = [json.loads((tmp_path / f"{o}{n}" / "run.json").read_text())["compile_s"] for n, o in runs]
    assert all(0.4 * r < s <= r for s, r in zip(seconds, reported, strict=True)), (seconds, reported)


def test_compile_log_summary_counts_only_compiles_in_the_total():
    """Loads from the cache ('hit') are listed apart; compiles with the cache ('miss') or without it ('off') sum up."""
    module = _load(REPO / "experiments" / "compile_log_summary.py")
    lines = [{"kind": "compile", "function": "jit(f)", "seconds": 2.0, "cache": "miss"},
             {"kind": "compile", "function": "jit(f)", "seconds": 0.5, "cache": "hit"},
             {"kind": "compile", "function": "jit(g)", "seconds": 3.0, "cache": "off"}]
    assert module.summary(lines)["compiles"] == {"total_compile_s": 5.0, "by_function": {
        "jit(g)": {"compiled": {"count": 1, "seconds": 3.0}, "loaded": {"count": 0, "seconds": 0.0}},
        "jit(f)": {"compiled": {"count": 1, "seconds": 2.0}, "loaded": {"count": 1, "seconds": 0.5}}}}


def test_compile_log_names_each_process_by_its_entry_point_and_its_parents(monkeypatch):
    """Interpreter options are skipped; a script is named with its first argument; a reused pid names its latest
    process."""
    monkeypatch.delenv("JAXDIST_COMPILE_LOG", raising=False)  # loaded here, the log must stay off (a census run)
    entry_point = _load(REPO / "experiments" / "compile_log" / "sitecustomize.py").entry_point
    assert [entry_point(argv) for argv in (
        ["python", "-m", "jaxdist.main", "--config=c.py"], ["python", "-u", "-c", "code"],
        ["python", "-X", "importtime", "-m", "jaxdist.launch", "--nproc=2"],
        ["python", "-B", "-W", "ignore", "-c", "x"],
        ["python", "/repo/tests/core_only.py", "jaxdist.main", "--config=c.py"],
        ["python", "experiments/peers/bench_jax.py", "--model=cnn"])] == [
        "-m jaxdist.main", "-c", "-m jaxdist.launch", "-c", "core_only.py jaxdist.main", "bench_jax.py"]
    lines = [{"kind": "process", "entry": "-m jaxdist.launch", "pid": 10, "parent": 1},
             {"kind": "process", "entry": "-m jaxdist.main", "pid": 11, "parent": 10},
             {"kind": "process", "entry": "-m jaxdist.main", "pid": 12, "parent": 10},
             {"kind": "process", "entry": "-c", "pid": 10, "parent": 1},  # pid 10 again, after the launcher ended
             {"kind": "process", "entry": "-m jaxdist.main", "pid": 13, "parent": 10}]
    processes = _load(REPO / "experiments" / "compile_log_summary.py").summary(lines)["processes"]
    assert processes == {"started": 5, "by_entry": {
        "-m jaxdist.main": {"count": 3, "started_by": {"-m jaxdist.launch": 2, "-c": 1}},
        "-m jaxdist.launch": {"count": 1, "started_by": {"not logged": 1}},
        "-c": {"count": 1, "started_by": {"not logged": 1}}}}


def test_run_summary_sums_up_a_resumed_run(tmp_path, cli_env):
    """experiments/run_summary.py (experiments/gpu_main.sh's output) on a digits run of 4 steps resumed to 8:
    every field against the run's own files."""
    workdir = tmp_path / "run"
    common = ["--config=configs/digits_dp.py", "--config.log_every=2", "--config.eval_every=4",
              "--config.checkpoint_every=4", f"--workdir={workdir}"]
    runs = subprocess.run([sys.executable, "-m", "tests.forked_cli"], cwd=REPO, env=cli_env, capture_output=True,
                          text=True, timeout=600,
                          input=json.dumps([[*common, "--config.total_steps=4"], [*common, "--config.total_steps=8"]]))
    assert runs.returncode == 0 and [r["returncode"] for r in json.loads(runs.stdout)] == [0, 0], runs.stdout[-3000:]
    proc = subprocess.run([sys.executable, "experiments/run_summary.py", str(workdir)], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (s,) = _json_lines(proc.stdout)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    last_eval = [r for r in rows if r["split"] == "eval"][-1]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert s["images_per_s_median"] == statistics.median(r["images_per_s"] for r in train[1:])  # not the warm-up window
    assert s["final_eval"] == {k: last_eval[k] for k in ("step", "accuracy", "loss", "examples")}
    assert s["final_eval"]["step"] == 8 and s["mfu_median"] is None  # no known peak for a CPU
    assert (s["attempts"], s["started_at_steps"]) == (2, [0, 4])
    assert (s["platform"], s["devices"], s["model"], s["total_steps"]) == ("cpu", 8, "cnn", 8)
    assert sum(s["shares"].values()) == pytest.approx(1, abs=1e-3)
    assert s["model_flops_per_step"] == json.loads((workdir / "parallel_report.json").read_text())["model_flops_per_step"]


BURN = """
import subprocess, sys, time


def _burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_in_process():
    _burn(0.4)


def test_in_a_subprocess():
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.4\\n"
                    "while time.process_time() < end: pass"], check=True)
"""


def test_suite_cpu_splits_a_tests_cpu_between_its_process_and_its_subprocesses(tmp_path):
    """experiments/suite_cpu on two tests that each burn 0.4 s of CPU, one itself and one in a child, and a
    module of one test that burns nothing (the summary puts it after test_burn.py)."""
    (tmp_path / "test_burn.py").write_text(BURN)
    (tmp_path / "test_idle.py").write_text("def test_idle():\n    pass\n")
    log = tmp_path / "cpu.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # the suite's own census, if it runs one
    env.update(PYTHONPATH=str(REPO / "experiments" / "suite_cpu"), SUITE_CPU_LOG=str(log))
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "suite_cpu", "-p", "no:cacheprovider",
                    "test_idle.py", "test_burn.py"], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=120)
    tests = {r["test"]: r for r in _json_lines(log.read_text())}
    own, child = tests["test_burn.py::test_in_process"], tests["test_burn.py::test_in_a_subprocess"]
    assert 0.4 <= own["cpu_s_in_process"] < 0.6 and own["cpu_s_subprocesses"] == 0
    assert 0.4 <= child["cpu_s_subprocesses"] < 0.8 and child["cpu_s_in_process"] < 0.2
    assert own["wall_s"] >= 0.4 and child["wall_s"] >= 0.4
    summary = subprocess.run([sys.executable, "experiments/suite_cpu/suite_cpu.py", str(log)], cwd=REPO,
                             check=True, capture_output=True, text=True, timeout=60)
    module, idle, total = _json_lines(summary.stdout)
    assert (module["module"], idle["module"], total["module"]) == ("test_burn.py", "test_idle.py", "(all)")
    assert (module["tests"], idle["tests"], total["tests"]) == (2, 1, 3)
    burned = sum(r["cpu_s_in_process"] + r["cpu_s_subprocesses"] for r in (own, child))
    assert module["cpu_s"] == pytest.approx(burned, abs=0.11)
    assert total["cpu_s"] == pytest.approx(module["cpu_s"] + idle["cpu_s"], abs=0.11)
    assert total["cpu_s_subprocesses"] == pytest.approx(child["cpu_s_subprocesses"], abs=0.06)
