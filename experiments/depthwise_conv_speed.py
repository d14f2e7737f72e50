"""Why layers.DepthwiseConv is written as shifted multiply-adds: XLA:CPU's grouped convolution is far slower.

    python experiments/depthwise_conv_speed.py   # seconds per gradient of a 5x5 depthwise conv, 64x16x16x64
    python experiments/depthwise_conv_speed.py --smoke   # the same at 4x8x8x8 (tests)

Measured on the 2-core VM (jaxlib 0.10.2): grouped 0.35 s, shifted 0.06 s on a quiet machine (2026-11-26);
4.8 s and 0.18 s while other jobs held the cores (2026-11-25). Outputs equal.
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if sys.argv[1:] not in ([], ["--smoke"]):
    sys.exit("usage: python experiments/depthwise_conv_speed.py [--smoke]")
batch, side, channels = (4, 8, 8) if sys.argv[1:] else (64, 16, 64)
x = jax.random.normal(jax.random.key(0), (batch, side, side, channels))
kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, channels))


def grouped(k, x):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def shifted(k, x):
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return sum(padded[:, i:i + h, j:j + w, :] * k[i, j, 0] for i in range(5) for j in range(5))


for conv in (grouped, shifted):
    grad = jax.jit(jax.grad(lambda k, x: (conv(k, x) ** 2).sum(), argnums=(0, 1)))
    jax.block_until_ready(grad(kernel, x))
    t = time.perf_counter()
    jax.block_until_ready(grad(kernel, x))
    print(f"{conv.__name__}: {time.perf_counter() - t:.2f} s per gradient")
print("max difference of outputs:", float(np.abs(grouped(kernel, x) - shifted(kernel, x)).max()))
