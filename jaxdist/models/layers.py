"""Flax NNX layers with logical axis names on every parameter (see parallel/rules.py for the names).

Params are float32 (`param_dtype`); `dtype` is the compute dtype, so bfloat16 runs keep float32
master weights and optimizer state.
"""
from flax import nnx

_kernel_init = nnx.initializers.lecun_normal()
_he_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_ch, out_ch, kernel, rngs, *, stride=1, bias=True, dtype=None, init=_kernel_init):
    return nnx.Conv(
        in_ch, out_ch, (kernel, kernel), strides=stride, padding="SAME", use_bias=bias, dtype=dtype,
        kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)


def dense(in_features, out_features, rngs, *, names=("embed", "hidden"), dtype=None):
    return nnx.Linear(
        in_features, out_features, dtype=dtype,
        kernel_init=nnx.with_partitioning(_kernel_init, names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), names[1:]),
        rngs=rngs)


def batch_norm(channels, rngs, *, dtype=None, zero_scale=False):
    """BatchNorm over the *global* batch: with the batch sharded, XLA inserts the all-reduce, so
    statistics (and results) do not depend on the mesh."""
    scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    return nnx.BatchNorm(
        channels, momentum=0.9, epsilon=1e-5, dtype=dtype, use_fast_variance=False,
        scale_init=nnx.with_partitioning(scale_init, ("conv_out",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)
