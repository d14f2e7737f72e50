"""How far ResNet-20 loss trajectories of different meshes drift from one device, step by step.

    PYTHONPATH=. python experiments/mesh_drift.py --data=synthetic --lr=0.001
    PYTHONPATH=. python experiments/mesh_drift.py --data=digits --image_size=16 --lr=0.002
    PYTHONPATH=. python experiments/mesh_drift.py --smoke   # the CNN, 3 steps, two meshes (tests)

Prints one JSON line per mesh: the relative loss difference to the single-device run at each of
`--steps` steps (global batch 16, 8 simulated CPU devices). docs/numerics.md section 2 has results.
"""
import argparse
import json

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

from tests.helpers import tiny_config, train_losses  # noqa: E402

MESHES = [dict(data=8), dict(fsdp=8), dict(data=4, model=2), dict(data=2, fsdp=2, model=2)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="synthetic")
    p.add_argument("--image_size", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="the seeds' CNN for 3 steps on data=8 and the hybrid mesh")
    args = p.parse_args()
    model, meshes = ("cnn", [MESHES[0], MESHES[-1]]) if args.smoke else ("resnet20", MESHES)
    if args.smoke:
        args.steps = 3
    overrides = {"data.name": args.data, "data.image_size": args.image_size, "optimizer.lr": args.lr,
                 "data.synthetic_shape": (16, 16, 3), "data.synthetic_examples": 256}
    reference, _, _ = train_losses(tiny_config(model, **overrides), args.steps, devices=jax.devices()[:1])
    for mesh in meshes:
        losses, _, _ = train_losses(tiny_config(model, mesh, **overrides), args.steps)
        drift = np.abs(losses - reference) / np.abs(reference)
        print(json.dumps({"mesh": mesh, "data": args.data, "image_size": args.image_size, "lr": args.lr,
                          "rel_diff_per_step": [float(f"{d:.2e}") for d in drift],
                          "max_rel_diff": float(f"{drift.max():.2e}")}), flush=True)


if __name__ == "__main__":
    main()
