"""BatchNorm with two-pass batch statistics, as PyTorch computes them, at the speed of flax's one-pass variance.

Why two passes: the one-pass E[x^2] - E[x]^2 cancels catastrophically when a channel's mean is large against
its spread (on tests/test_batch_norm.py's inputs, means up to 200 and spreads down to 0.1, it is 8% off;
two passes, 4e-7).
Why not nnx.BatchNorm(use_fast_variance=False): JAX's gradient of E[(x - E[x])^2] also differentiates
through the inner mean, a term that is zero (the deviations from the mean sum to zero) and costs one more
pass over every BatchNorm input. ResNet-20's train step read 13% more bytes than the hand-written loop's
(experiments/step_cost.py; docs/benchmarks.md). Here the gradient is in closed form,
d var / dx = 2 (x - mean) / n, an elementwise term XLA fuses into the layer's other gradient work.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _batch_statistics(x, axes: tuple[int, ...], axis_name: str | None):
    """(mean, variance) of x over `axes` and, when given, over the vmapped `axis_name` too (each kept as
    x's rank, for broadcasting)."""
    if axis_name is None:
        return _statistics(x, axes)
    # Shared by vmapped copies (parallel/bn_groups.py): JAX's own gradient, as a custom_vjp's backward
    # pass cannot average over the vmapped axis.
    mean = jax.lax.pmean(x.mean(axes, keepdims=True), axis_name)
    return mean, jax.lax.pmean(jnp.square(x - mean).mean(axes, keepdims=True), axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _statistics(x, axes):
    return _statistics_forward(x, axes)[0]


def _statistics_forward(x, axes):
    mean = x.mean(axes, keepdims=True)
    return (mean, jnp.square(x - mean).mean(axes, keepdims=True)), (x, mean)


def _statistics_backward(axes, residuals, cotangents):
    """d mean / dx = 1 / n and d var / dx = 2 (x - mean) / n: the variance's term through the mean,
    -2 mean(x - mean) / n, is zero, as the deviations from the mean sum to zero."""
    x, mean = residuals
    d_mean, d_variance = cotangents
    return ((d_mean + 2.0 * d_variance * (x - mean)) / (x.size // mean.size),)


_statistics.defvjp(_statistics_forward, _statistics_backward)


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm (same variables, running averages and evaluation path) with two-pass batch statistics
    and their closed-form gradient. Masks and axis_index_groups are not supported (jaxdist uses neither)."""

    def __call__(self, x, use_running_average: bool | None = None):
        running = self.use_running_average if use_running_average is None else use_running_average
        if running:
            return super().__call__(x, use_running_average=True)
        if self.axis not in (-1, x.ndim - 1) or self.axis_index_groups is not None:
            raise ValueError(f"{type(self).__name__} normalises the last axis without axis_index_groups; got "
                             f"axis={self.axis}, axis_index_groups={self.axis_index_groups}")
        # As nnx.BatchNorm: x, scale and bias in the compute dtype, statistics in at least float32.
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
        axes = tuple(range(x.ndim - 1))  # every axis but the features (the last)
        mean, variance = _batch_statistics(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axes, self.axis_name)
        for average, batch in ((self.mean, mean), (self.var, variance)):
            update = self.momentum * average[...] + (1 - self.momentum) * batch.squeeze(axes)
            average[...] = jax.lax.stop_gradient(update)
        y = (x - mean) * (jax.lax.rsqrt(variance + self.epsilon) * scale) + bias
        return y.astype(jnp.result_type(x, scale, bias))
