"""Step benchmark: python -m jaxdist.bench --config=configs/cifar_dp.py [--steps=20 --warmup=3 --repeats=3]
Input benchmark: python -m jaxdist.bench --config=configs/cifar_dp.py --data_only --steps=200 (the default is 20)

Times what `jaxdist.main` runs with the same command line: the same entry sequence, config, mesh,
shardings, optimizer and schedule, the same compiled step variants with donation, and the loop's own
way of running them (loop.run_step: at most 8 steps in flight, metrics left on device and read at the
config's log points). The only difference is the data: synthetic images of the configured dataset's
shape, one batch reused, so it needs no download and measures the step, not the input pipeline.
`extras` says which of the default path's extras were on (NaN guard, gradient-norm metric, ...).

`images_per_s`: the median over `repeats` rounds of `steps` steps run as the loop runs them (the
figure to compare with a hand-written loop, experiments/overhead.sh). `step_ms_p50/p90/min`: the same
steps, each blocked on separately (latency, and the MFU at the median step). `input_images_per_s`: what
the configured pipeline (transforms, threads or workers, device prefetch) delivers from synthetic records
of the same shape with no step consuming them; training runs at no more than the lower of the two. (On
one H100 the step ran at 45k images/s while the input, then built image by image in Python, gave 8.5k:
docs/benchmarks.md, "On one GPU".) It leaves out reading and decoding the real dataset: --data_only.

With --profile_dir=DIR it then runs --steps more steps under jax.profiler, a trace in DIR;
experiments/step_profile.py sums such a trace per XLA op.

With --data_only it times the input pipeline alone instead: the configured dataset, transforms,
threads/workers and device prefetch, exactly as training reads them, reporting images/s delivered.

Also reports the parallel report's fields (jaxdist/parallel/report.py): bytes per device of params,
optimizer state and temporaries, each collective's kind, mesh axes and bytes per device per step (parsed
from the compiled HLO), FLOPs per step, and MFU at the median step where the chip's peak is known.
A sync mode with several step variants (local_sgd's local and sync steps) runs them in its schedule;
`collective_bytes_per_step` is then their mean over the timed steps, `collective_bytes_by_variant` each one's.
"""
if __name__ == "__main__":  # first: a restart with malloc's huge pages (jaxdist/host_memory.py) costs ~50 ms
    from jaxdist import host_memory
    host_memory.restart_with_huge_pages()

import contextlib
import itertools
import json
import os
import resource
import statistics
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from jaxdist import host_memory
from jaxdist.cli import fail, parse_flags, start
from jaxdist.data.synthetic import synthetic_shape, use_synthetic_data  # noqa: F401 (tests import synthetic_shape)
from jaxdist.errors import ConfigError
from jaxdist.parallel import mesh as mesh_lib
from jaxdist.parallel import sharding as sharding_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]); "
                                          "override fields with --config.a.b=value (jaxdist/config.py lists them).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed round; as many again are blocked on one by one "
                              "for the step-time percentiles.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", lower_bound=0)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds of --steps steps run as the train loop runs them.",
                                lower_bound=1)
_DATA_ONLY = flags.DEFINE_bool("data_only", False, "Time the input pipeline (config.data) instead of the step.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "After the timed rounds, run --steps more steps, each "
                                   "blocked on, under jax.profiler: a trace in this directory for TensorBoard or "
                                   "Perfetto, which experiments/step_profile.py sums op by op.")
flags.mark_flags_as_required(["config"])


def _percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def extras(config) -> dict:
    """The default path's extras that a bare hand-written loop lacks, as this config sets them."""
    return {"nan_guard": config.nan_policy != "off", "grad_norm_metric": config.log_grad_norm,
            "schedule": config.schedule.name, "warmup_steps": config.schedule.warmup_steps,
            "weight_decay": config.optimizer.weight_decay, "clip_norm": config.optimizer.clip_norm,
            "log_every": config.log_every}


def run(config, steps: int, warmup: int, repeats: int, profile_dir: str | None = None) -> dict:
    import jax
    import numpy as np

    from jaxdist.parallel import collectives
    from jaxdist.parallel import report as report_lib
    from jaxdist.train import loop
    from jaxdist.train.window import TrainWindow

    dataset = use_synthetic_data(config)
    exp = loop.build_experiment(config)
    t0 = time.perf_counter()
    lowered = loop.lower_train_step(exp)
    train_steps = loop.compile_train_step(exp, lowered)
    compile_s = time.perf_counter() - t0
    state = loop.init_state(exp)
    batch = next(loop.train_batches(exp, stop=1))
    jax.block_until_ready(batch)
    window = TrainWindow(config.batch_size, config.total_steps, config.nan_policy)
    inflight = loop.InflightSteps()
    step_numbers = itertools.count(1)

    log_points = []  # seconds of each log point's reading and summing, after its steps finished

    def train_step(state):  # as the train loop runs step k, without its checkpoint and eval points
        k = next(step_numbers)
        state, metrics = loop.run_step(exp, train_steps, k, state, batch, inflight, window)
        if k % config.log_every == 0:
            jax.block_until_ready(metrics)  # the log point waits for its steps anyway; their time is not its own
            t = time.perf_counter()
            window.check_finite(None)
            window.summary(k)
            log_points.append(time.perf_counter() - t)
        return state, metrics

    metrics = None
    for _ in range(warmup):
        state, metrics = train_step(state)
    jax.block_until_ready((state, metrics))
    times, faults_before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = jax.block_until_ready(train_step(state))
        times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = train_step(state)
        jax.block_until_ready((state, metrics))
        rates.append(steps * config.batch_size / (time.perf_counter() - t))
    loss = float(np.asarray(metrics["loss"]))  # after the timed steps, whether or not a profile follows
    if profile_dir:  # after the timed steps, which the profiler would slow down
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = jax.block_until_ready(train_step(state))

    p50 = statistics.median(times)
    input_images_per_s = input_rate(exp, steps * repeats, warmup)
    report = loop.parallel_report(exp, train_steps, report_lib.model_flops(lowered[exp.sync.variants[-1]]))
    by_variant = {v: collectives.collective_bytes(s.as_text()) for v, s in train_steps.items()}
    timed = [by_variant[exp.sync.variant_at(k)] for k in range(warmup + 1, warmup + steps * (1 + repeats) + 1)]
    return {
        "model": config.model.name,
        "data": dataset,
        "data_shape": list(exp.data.image_shape),
        "mesh": {a: int(n) for a, n in exp.mesh.shape.items()},
        "devices": exp.mesh.size,
        "platform": jax.devices()[0].platform,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the cores this process may run on (launch --pin: one)
        "global_batch": config.batch_size,
        "grad_accum_steps": config.optimizer.grad_accum_steps,
        "dtype": config.dtype,
        "optimizer": config.optimizer.name,
        "extras": extras(config),
        "images_per_s": statistics.median(rates),
        "images_per_s_rounds": [round(r, 1) for r in rates],
        "blocked_images_per_s": config.batch_size / p50,
        "input_images_per_s": input_images_per_s,
        "step_ms_p50": round(p50 * 1e3, 3),
        "step_ms_p90": round(_percentile(times, 0.9) * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "compile_s": round(compile_s, 3),
        "log_points": len(log_points),  # every log_every steps: the window's metrics read and summed (window.py)
        "log_point_ms_p50": round(statistics.median(log_points) * 1e3, 3) if log_points else None,
        "params_bytes_per_device": sharding_lib.bytes_per_device(exp.abstract_state["params"], exp.shardings["params"]),
        "opt_state_bytes_per_device": sharding_lib.bytes_per_device(exp.abstract_state["opt_state"],
                                                                 exp.shardings["opt_state"]),
        "temp_bytes_per_device": report["bytes_per_device"]["temp"],
        **report,  # the parallel report's fields (jaxdist/parallel/report.py)
        "mfu": report_lib.mfu(report, p50),  # at the median step; null without a known peak
        "sync": config.sync.to_dict(),
        "collective_bytes_per_step": {k: round(statistics.mean(t[k] for t in timed)) for k in timed[0]},
        "collective_bytes_by_variant": by_variant,
        "loss": loss,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_huge_pages": host_memory.in_force(),  # jaxdist/host_memory.py: malloc's mappings in 2 MB pages
        "host_page_faults_per_step": round(faults, 1),  # minor faults: host pages touched for the first time
        "profile": {"dir": profile_dir, "steps": steps} if profile_dir else None,
    }


def input_rate(exp, steps: int, warmup: int) -> float:
    """Images/s the experiment's train pipeline delivers onto the devices, with no step consuming them."""
    import jax

    from jaxdist.train import loop

    with contextlib.closing(loop.train_batches(exp, stop=warmup + steps)) as batches:
        for _ in range(warmup):
            jax.block_until_ready(next(batches))
        t = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(next(batches))
        return steps * exp.config.batch_size / (time.perf_counter() - t)


def run_data_only(config, steps: int, warmup: int) -> dict:
    """Images/s the input pipeline delivers onto the devices, with no step consuming them."""
    import jax

    from jaxdist.train import loop

    exp = loop.build_experiment(config)
    rate = input_rate(exp, steps, warmup)
    d = config.data
    return {"benchmark": "input", "data": d.name, "augment": d.augment, "data_shape": list(exp.data.image_shape),
            "global_batch": config.batch_size, "devices": exp.mesh.size, "num_threads": d.num_threads,
            "worker_count": d.worker_count, "prefetch": d.prefetch, "steps": steps, "warmup": warmup,
            "images_per_s": rate, "batch_ms": round(1e3 * config.batch_size / rate, 3),
            "jax": jax.__version__}


def _check_profile_dir() -> None:
    """Before the minutes of a benchmark, not after them: the trace's directory can be written."""
    if _DATA_ONLY.value:
        fail("--profile_dir traces the train step and --data_only times the input pipeline alone: pass one of them")
    try:
        os.makedirs(_PROFILE_DIR.value, exist_ok=True)
        with tempfile.TemporaryFile(dir=_PROFILE_DIR.value):
            pass
    except OSError as e:
        fail(f"--profile_dir={_PROFILE_DIR.value}: cannot write there ({e.strerror}); give a writable directory")


def main(argv):
    del argv
    if _PROFILE_DIR.value:
        _check_profile_dir()
    try:
        config = start(_CONFIG)
        result = (run_data_only(config, _STEPS.value, _WARMUP.value) if _DATA_ONLY.value else
                  run(config, _STEPS.value, _WARMUP.value, _REPEATS.value, _PROFILE_DIR.value))
    except ConfigError as e:
        fail(str(e))
    if mesh_lib.is_primary():
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
