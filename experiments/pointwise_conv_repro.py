"""Repro: XLA's SPMD partitioner computes a 1x1 convolution wrong when it is vmapped over a sharded dim
(jax/jaxlib 0.10.2, CPU, GSPMD and Shardy alike); a 3x3 conv is right. This is the pipeline's case (the
stage dim, parallel/pipeline.py), so models/convmixer.py writes its pointwise conv as a dense layer.

    python experiments/pointwise_conv_repro.py   # prints the max error per kernel size; 1x1 is ~20
"""
import jax
import numpy as np

jax.config.update("jax_num_cpu_devices", 2)
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402


def conv(kernel, x):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


mesh = jax.make_mesh((2,), ("stage",), axis_types=(AxisType.Auto,))
split = NamedSharding(mesh, PartitionSpec("stage"))
x = jax.random.normal(jax.random.key(1), (2, 8, 4, 4, 16))
for size in (1, 3):
    kernels = jax.random.normal(jax.random.key(0), (2, size, size, 16, 16))
    expected = jax.vmap(conv)(kernels, x)
    for shardy in (False, True):
        jax.config.update("jax_use_shardy_partitioner", shardy)
        got = jax.jit(jax.vmap(conv), in_shardings=(split, split), out_shardings=split)(kernels, x)
        print(f"{size}x{size} conv, {'Shardy' if shardy else 'GSPMD'}: max error {float(np.abs(got - expected).max()):.3g}")
