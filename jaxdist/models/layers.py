"""Flax NNX layers with logical axis names on every parameter (see parallel/rules.py for the names).

Params are float32 (`param_dtype`); `dtype` is the compute dtype, so bfloat16 runs keep float32
master weights and optimizer state.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdist.models.batch_norm import BatchNorm

_kernel_init = nnx.initializers.lecun_normal()
_he_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_ch, out_ch, kernel, rngs, *, stride=1, bias=True, dtype=None, init=_kernel_init, padding="SAME"):
    return nnx.Conv(
        in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding, use_bias=bias, dtype=dtype,
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
    statistics (and results) do not depend on the mesh. Two-pass statistics (models/batch_norm.py)."""
    scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    return BatchNorm(
        channels, momentum=0.9, epsilon=1e-5, dtype=dtype, use_fast_variance=False,  # as it computes them
        scale_init=nnx.with_partitioning(scale_init, ("conv_out",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)


def layer_norm(channels, rngs, *, dtype=None):
    """LayerNorm over the channels of each position: per example, so independent of the batch's split."""
    return nnx.LayerNorm(
        channels, epsilon=1e-6, dtype=dtype,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)


class DepthwiseConv(nnx.Module):
    """A k x k filter per channel, stride 1, 'SAME' padding: the same math as nnx.Conv with
    feature_group_count=channels, written as k*k shifted multiply-adds. Why: XLA:CPU runs grouped
    convolutions 6-27x slower (a 5x5 depthwise conv's gradient at 64x16x16x64 on 2 cores, jaxlib 0.10.2:
    0.35 vs 0.06 s on a quiet machine, 4.8 vs 0.18 s under load; experiments/depthwise_conv_speed.py),
    which made ConvMixer untrainable on the simulated CPU meshes."""

    def __init__(self, channels: int, kernel: int, rngs: nnx.Rngs, *, dtype=None):
        # nnx.Conv's depthwise layout and init: (k, k, 1, channels), fan-in k*k.
        self.kernel = nnx.Param(nnx.with_partitioning(_kernel_init, (None, None, None, "conv_out"))(
            rngs.params(), (kernel, kernel, 1, channels)))
        self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",))(
            rngs.params(), (channels,)))
        self.dtype = dtype

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        out = _shifted_multiply_adds(x.astype(dtype), self.kernel[...].astype(dtype))
        return out + self.bias[...].astype(dtype)


@jax.checkpoint
def _shifted_multiply_adds(x, kernel):
    """The depthwise conv's sum. Under jax.checkpoint its backward keeps x alone and slices it again, where
    plain autodiff keeps each of the k*k shifted slices: ConvMixer's blocks run in a scan, which stacks a
    block's residuals for every block, and those 25 copies of each block's input made half of its step's
    temporaries (docs/performance.md, "ConvMixer's depthwise conv")."""
    k = kernel.shape[0]
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))  # as XLA pads SAME
    return sum(padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0] for i in range(k) for j in range(k))
