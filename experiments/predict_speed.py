"""Inference speed from image files on disk: jaxdist.predict's images/s for the seeds' CNN (8x8 grey
digits) and ResNet-20 (32x32 RGB, CIFAR-shaped), and which side limits it: reading the files (decode,
resize, normalise in the run's data.num_threads threads) or the model.

    python experiments/predict_speed.py                     # 4,000 files per model, ~3 min on 2 cores
    python experiments/predict_speed.py --models cnn --images 40 --out /tmp/ps   # tiny, for the test suite

Per model: a short training run gives a checkpoint (speed does not depend on the weights), N PNG files
are written, and `python -m jaxdist.predict --workdir=RUN FOLDER --output=...` runs as a user runs it,
default flags (JAX's default devices: one on a CPU host, --cpu_devices adds simulated ones). Its own
summary line gives images/s (files read, decoded and predicted, compile excluded). Then, in this
process with the same Predictor, the two sides alone: `input` iterates the batches without running the
model; `model` runs the compiled step on one batch already on the devices. One JSON line per model.
"""
import argparse
import json
import os
import re
import sys
import time

import harness
import numpy as np
from PIL import Image

MODELS = {  # name -> training command (a checkpoint to predict with), image shape of the files
    "cnn": (["--config=configs/digits_dp.py", "--config.total_steps=20"], (8, 8, 1)),
    "resnet20": (["--config=configs/cifar_dp.py", "--config.data.name=synthetic", "--config.data.synthetic_shape=(32,32,3)",
                  "--config.data.synthetic_examples=256", "--config.total_steps=2", "--config.batch_size=32",
                  "--config.eval_batch_size=32", "--config.schedule.warmup_steps=0"], (32, 32, 3)),
}


def write_images(folder: str, count: int, shape: tuple[int, int, int]) -> None:
    """Noise images (PNG decodes noise more slowly than photos: a lower bound on the input side)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(os.path.join(folder, f"{i:06d}.png"))


def sides(workdir: str, folder: str) -> dict:
    """images/s of the input side alone and of the model alone, with the Predictor predict builds."""
    import jax
    from jaxdist import inference
    files = inference.image_files([folder])
    predictor = inference.Predictor(inference.open_run(workdir), inference.parse_mesh(""))
    start, batches = time.perf_counter(), list(predictor.batches(files))
    jax.block_until_ready(batches)
    input_rate = len(files) / (time.perf_counter() - start)
    predictor(batches[0])  # warm
    rounds = max(3, len(batches))
    start = time.perf_counter()
    for _ in range(rounds):
        predictor(batches[0])  # as predict calls it: the top-k back on the host
    model_rate = rounds * predictor.batch_size / (time.perf_counter() - start)
    return {"batch": predictor.batch_size, "input_only_images_per_s": round(input_rate, 1),
            "model_only_images_per_s": round(model_rate, 1), "limit": "input" if input_rate < model_rate else "model"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/predict_speed")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--devices", type=int, default=1, help="--cpu_devices for predict (1: JAX's default on CPU)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    args = p.parse_args()
    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)  # for sides(), in this process
    for name in args.models.split(","):
        train, shape = MODELS[name]
        workdir, folder = os.path.join(args.out, name, "run"), os.path.join(args.out, name, "images")
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            harness.run([sys.executable, "-m", "jaxdist.main", *train, f"--workdir={workdir}",
                         "--config.checkpoint_every=1000"])
        if not os.path.isdir(folder):
            write_images(folder, args.images, shape)
        output = os.path.join(args.out, name, "preds.jsonl")
        if os.path.exists(output):
            os.remove(output)
        proc, wall = harness.run([sys.executable, "-m", "jaxdist.predict", f"--workdir={workdir}", folder,
                                  f"--output={output}", f"--cpu_devices={args.devices}"])
        rate = float(re.search(r"([\d.]+) images/s", proc.stderr)[1])
        row = {"model": name, "images": args.images, "image_shape": list(shape), "devices": args.devices,
               "predict_images_per_s": rate, "predict_wall_s": round(wall, 2),
               **sides(workdir, folder), "machine": harness.machine()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
