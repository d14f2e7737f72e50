"""Relative error of the bfloat16 gradient all-reduce (sync.grad_dtype=bfloat16) against float32 on real
digits batches: the recipe of configs/digits_dp.py (CNN, data=8, batch 128), at initialisation and, with
--trained=WORKDIR, at a trained run's weights. The gradient is read off one plain-SGD step with lr 1 and
no weight decay (update = -gradient).

    PYTHONPATH=. python experiments/bf16_grad_error.py [--trained=runs/digits]   (docs/parallelism.md)
    PYTHONPATH=. python experiments/bf16_grad_error.py --smoke   # batch 0 only, at initialisation (tests)
"""
import argparse

import jax
import numpy as np

from configs import digits_dp


def gradient(grad_dtype: str, weights_from: str, batch_index: int) -> np.ndarray:
    from jaxdist.train import loop
    c = digits_dp.get_config()
    c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay = "sgd", 1.0, 0.0
    c.schedule.name, c.schedule.warmup_steps = "constant", 0
    c.sync.grad_dtype = grad_dtype
    exp = loop.build_experiment(c)
    state = loop.init_state(exp, weights_from)
    before = [np.asarray(a) for a in jax.tree.leaves(state["params"])]
    batch = next(loop.train_batches(exp, start=batch_index, stop=batch_index + 1))
    state, _ = loop.compile_train_step(exp)["step"](state, batch)
    return np.concatenate([(b - np.asarray(a)).ravel() for a, b in zip(jax.tree.leaves(state["params"]), before)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trained", default="", help="a workdir of a digits_dp.py run, for trained weights")
    parser.add_argument("--smoke", action="store_true", help="the first batch only (tests)")
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", digits_dp.get_config().cpu_devices)
    for label, weights in (("init", ""), ("trained", args.trained)) if args.trained else (("init", ""),):
        for batch_index in (0,) if args.smoke else (0, 1):
            f32, bf16 = gradient("float32", weights, batch_index), gradient("bfloat16", weights, batch_index)
            big = np.abs(f32) > 1e-3 * np.abs(f32).max()  # elementwise errors of the non-negligible entries
            print(f"{label} weights, batch {batch_index}: |g_bf16 - g_f32| / |g_f32| = "
                  f"{np.linalg.norm(bf16 - f32) / np.linalg.norm(f32):.2e}, median elementwise relative error "
                  f"{np.median(np.abs(bf16 - f32)[big] / np.abs(f32[big])):.2e}", flush=True)


if __name__ == "__main__":
    main()
