"""First-step gradients on each mesh vs one device, under the Shardy and GSPMD partitioners.

    python experiments/partitioner_check.py --model=cnn --partitioner=shardy
    python experiments/partitioner_check.py --model=cnn --partitioner=gspmd
    python experiments/partitioner_check.py --partitioner=gspmd --smoke   # the hybrid mesh only (tests)

Prints one JSON line per mesh: the worst relative gradient error over all parameters. docs/numerics.md
records what it printed and why jaxdist uses GSPMD.
"""
import argparse
import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)
sys.path.insert(0, __file__.rsplit("/experiments/", 1)[0])

import numpy as np  # noqa: E402

from jaxdist.train import loop, step as step_lib  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

MESHES = [dict(data=8), dict(fsdp=8), dict(data=4, model=2), dict(data=2, fsdp=2, model=2)]


def gradients(model, partitioner, mesh, devices=None):
    config = tiny_config(model, mesh)
    exp = loop.build_experiment(config, devices)  # build_mesh selects GSPMD; override it afterwards
    jax.config.update("jax_use_shardy_partitioner", partitioner == "shardy")
    state = loop.init_state(exp)
    batch = next(loop.train_batches(exp, stop=1))
    loss = lambda p, s, x, y: step_lib._loss_and_stats(exp.forward, p, s, x, y)[0]
    return jax.device_get(jax.jit(jax.grad(loss))(state["params"], state["batch_stats"], batch["images"],
                                                 batch["labels"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cnn")
    p.add_argument("--partitioner", choices=["shardy", "gspmd"], default="shardy")
    p.add_argument("--smoke", action="store_true", help="data=2 fsdp=2 model=2 only, where Shardy goes wrong")
    args = p.parse_args()
    reference = gradients(args.model, args.partitioner, {}, jax.devices()[:1])
    for mesh in MESHES[-1:] if args.smoke else MESHES:
        got = gradients(args.model, args.partitioner, mesh)
        worst = max(float(np.abs(a - b).max() / np.abs(b).max())
                    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)))
        print(json.dumps({"model": args.model, "partitioner": args.partitioner, "mesh": mesh,
                          "max_rel_grad_error": worst, "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
    main()
