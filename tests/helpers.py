"""Small builders shared by tests: tiny configs, a few training steps through the real loop pieces, the CLI."""
import subprocess
import sys

import jax
import numpy as np

from jaxdist.config import base_config
from jaxdist.train import loop
from tests.conftest import REPO


def tiny_config(model="cnn", mesh=None, **overrides):
    """Real 8x8 digits, global batch 16 (every test mesh divides it), a smooth learning rate.

    A smooth loss path matters: with chaotic training (random labels, high lr) float reassociation
    between meshes is amplified step by step, and no implementation could match to 1e-4.
    """
    c = base_config()
    c.model.name = model
    c.data.name = "digits"
    c.batch_size = 16
    c.total_steps = 10
    c.optimizer.lr = 0.01
    c.schedule.name = "constant"
    c.mesh.update({**dict(stage=1, data=1, fsdp=1, spatial=1, model=1), **(mesh or {})})
    for key, value in overrides.items():
        target, *path = key.split(".")
        node = c
        for name in [target, *path][:-1]:
            node = node[name]
        node[[target, *path][-1]] = value
    return c


def train_losses(config, steps, devices=None):
    """Losses of `steps` real train steps (same step, data and init code as jaxdist.main)."""
    exp = loop.build_experiment(config, devices)
    train_steps, _, _ = loop.compile_steps(exp)
    state = loop.init_state(exp)
    batches = loop.train_batches(exp, stop=steps)
    losses = []
    for step in range(1, steps + 1):
        state, metrics = train_steps[exp.sync.variant_at(step)](state, next(batches))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses)), state, exp


def run_cli(env, *args, module="jaxdist.main", timeout=600, core_only=False):
    """`python -m jaxdist.main ARGS` from the repo root, as a user runs it. `core_only`: as after a plain
    `pip install .`, without the packages only extras bring (tests/core_only.py)."""
    launcher = [str(REPO / "tests" / "core_only.py")] if core_only else ["-m"]
    return subprocess.run([sys.executable, *launcher, module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
