"""What a log point spends reading a window's metrics: `jax.device_get` of every step's dict (the train loop's
read until 2026-11-27) against `jaxdist.train.window.fetch` (the steps stacked on the device in chunks, one
transfer per chunk and metric), on the same window of real train-step metrics, alternated.

    python experiments/log_point_cost.py                          # digits CNN, 1 and 8 devices, 100-step windows
    python experiments/log_point_cost.py --devices=1 --window=40 --rounds=2  # tiny, for the test suite

Prints one JSON line per device count: the median milliseconds of each read over `--rounds` windows (the
first read of `fetch` compiles its program and is left out), and that first read's time.
"""
import argparse
import importlib.util
import json
import os
import statistics
import time

import harness


def measure(devices: int, window_steps: int, rounds: int) -> dict:
    import jax

    from jaxdist.train import loop, window

    spec = importlib.util.spec_from_file_location("digits_dp", os.path.join(harness.REPO, "configs", "digits_dp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.cpu_devices, config.mesh.data = devices, devices
    exp = loop.build_experiment(config, jax.devices()[:devices])
    train_steps, _, _ = loop.compile_steps(exp)
    state = loop.init_state(exp)
    batch = next(loop.train_batches(exp, stop=1))
    inflight = loop.InflightSteps()
    reads = {"device_get": [], "fetch": []}
    first_fetch_s = None
    for _ in range(rounds + 1):
        rows = []
        for step in range(window_steps):
            state, metrics = train_steps[exp.sync.variant_at(step + 1)](state, batch)
            inflight.add(metrics["loss"])
            rows.append(metrics)
        jax.block_until_ready(rows)
        for name, read in (("device_get", jax.device_get), ("fetch", window.fetch)):
            t = time.perf_counter()
            read(rows)
            reads[name].append(time.perf_counter() - t)
        if first_fetch_s is None:
            first_fetch_s = reads["fetch"].pop(0)
            reads["device_get"].pop(0)
    return {"devices": devices, "window_steps": window_steps, "rounds": rounds,
            "metrics_per_step": len(rows[0]), "device_get_ms": round(1e3 * statistics.median(reads["device_get"]), 2),
            "fetch_ms": round(1e3 * statistics.median(reads["fetch"]), 2),
            "fetch_first_ms_with_compile": round(1e3 * first_fetch_s, 1), "platform": jax.devices()[0].platform,
            "jax": jax.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,8", help="comma-separated device counts (simulated on CPU)")
    parser.add_argument("--window", type=int, default=100, help="steps per window (configs' log_every: 100)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    import jax

    jax.config.update("jax_num_cpu_devices", max(counts))  # simulated CPU devices; other backends ignore it
    for devices in counts:
        print(json.dumps(measure(devices, args.window, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
