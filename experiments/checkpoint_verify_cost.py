"""What checkpoint checksums and the per-step save check cost, for a ResNet-50-sized train state: 25.6M
float32 params plus as many for momentum (205 MB), saved and restored through jaxdist's Checkpointer on one
CPU device. docs/checkpoints.md ("What the checks cost") quotes its output.

    python experiments/checkpoint_verify_cost.py [--dir DIR] [--saves 3]   # one JSON object on stdout
    python experiments/checkpoint_verify_cost.py --smoke   # a 0.1 MB state, 2 saves (tests)

- save_call_s: the blocking part of save() (Orbax copies the arrays to host, then writes in the background)
- background_write_s: from save() returning until Orbax's write is complete
- checksums_s: the extra main-thread time per save: the sha256 of every file of the step, plus the JSON
- verify_s / restore_s: checking a step's checksums before a restore / the restore itself
- check_saves_us: one check_saves() call (the loop calls it every step), idle and while a save is running
Files are read back from the page cache right after they were written: a cold read from disk is slower.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402
from jaxdist.config import base_config  # noqa: E402
from jaxdist.train import checkpoint  # noqa: E402

ARRAYS, SHAPE = 50, (512, 1000)  # 50 x 512,000 = 25.6M parameters


def filesystem(path: str) -> str:
    """The type of the filesystem `path` is on (the longest mount point above it in /proc/mounts)."""
    best, kind = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fs, *_ = line.split()
            if os.path.realpath(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fs
    return kind


def idle_check_saves_us(ckpt, calls: int = 100_000) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        ckpt.check_saves()
    return (time.perf_counter() - t) / calls * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=None, help="where to write (default: a new directory under $TMPDIR)")
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="2 saves of a 0.1 MB state: 2 arrays of 64x100 and their momentum (tests)")
    args = parser.parse_args()
    arrays, shape, idle_calls = (2, (64, 100), 1000) if args.smoke else (ARRAYS, SHAPE, 100_000)
    if args.smoke:
        args.saves = 2
    root = tempfile.mkdtemp(prefix="ckpt_cost_", dir=args.dir)
    rng = np.random.default_rng(0)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = {f"layer{i}": jax.device_put(rng.standard_normal(shape, np.float32), device) for i in range(arrays)}
    state = {"params": params, "opt_state": {"momentum": jax.tree.map(lambda a: a * 0.5, params)}}
    config = base_config()

    rows, busy = [], []
    with checkpoint.Checkpointer(root, keep=args.saves) as ckpt:
        for step in range(1, args.saves + 1):
            t0 = time.perf_counter()
            ckpt.save(step, state, config, {"next": step})
            t1 = time.perf_counter()
            while True:  # as the loop does every step; the first call after Orbax's write writes the checksums
                t2 = time.perf_counter()
                ckpt.check_saves()
                t3 = time.perf_counter()
                if not ckpt._unchecked:
                    break
                busy.append((t3 - t2) * 1e6)
            rows.append({"save_call_s": t1 - t0, "background_write_s": t2 - t1, "checksums_s": t3 - t2})
        idle_us = idle_check_saves_us(ckpt, idle_calls)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    shardings = jax.tree.map(lambda a: device, state)
    for row, step in zip(rows, range(1, args.saves + 1)):
        reader = checkpoint.Checkpointer(root, 1, read_only=True)
        t0 = time.perf_counter()
        reader._verify(step)
        t1 = time.perf_counter()
        restored, _ = reader.restore(step, abstract, shardings)  # verified above: restore alone
        jax.block_until_ready(restored)
        row.update(verify_s=t1 - t0, restore_s=time.perf_counter() - t1)
        reader.close()
    step_dir = os.path.join(root, "1")
    files = [os.path.join(r, n) for r, _, names in os.walk(step_dir) for n in names]
    print(json.dumps({
        "state_mb": round(sum(a.nbytes for a in jax.tree.leaves(state)) / 1e6, 1),
        "step_files": len(files), "step_mb": round(sum(os.path.getsize(f) for f in files) / 1e6, 1),
        **{k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]},
        "check_saves_us": {"idle": round(idle_us, 2),
                           "while_saving": round(statistics.median(busy), 2) if busy else None},
        "saves": args.saves, "filesystem": filesystem(root), "machine": harness.machine(),
        "versions": harness.versions(),
    }))
    shutil.rmtree(root)


if __name__ == "__main__":
    sys.exit(main())
