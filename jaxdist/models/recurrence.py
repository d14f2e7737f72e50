"""A recurrent scan whose recurrent-weight gradient is one matmul over all time steps, after the loop.

Why: differentiating a lax.scan accumulates the gradient of a weight used at every step inside the
backward loop, and under data parallelism GSPMD keeps that accumulator replicated, so it all-reduces each
step's contribution: T all-reduces per weight per train step. Here the backward loop only carries the
state's cotangent back in time and stacks each step's cotangent of h_{t-1} @ w; the weight gradient,
sum over time and batch of h_{t-1}^T dz_t, is then one einsum that contracts the (sharded) batch, which
the partitioner reduces once. cuDNN and oneDNN compute RNN weight gradients the same way. No mesh is
needed, so it also runs unchanged inside a shard_map (parallel/sync.py's per-replica steps).
"""
import functools

import jax
import jax.numpy as jnp


def _project(h, w, dtype):
    """h (batch, hidden) @ w (hidden, *gates), in the cell's compute dtype as Flax's Linear does."""
    return jnp.tensordot(h.astype(dtype), w.astype(dtype), axes=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def scan(step, w, xs, carry, unroll=1):
    """h_t for t = 1..T, time-major (T, batch, hidden), of carry_t = step(carry_{t-1}, xs_t, h_{t-1} @ w).

    step: the cell's elementwise gate math; carry: a tuple whose last entry is h (LSTM (c, h), GRU (h,));
    xs: (T, batch, *gates) input projections of all steps, computed before the loop; w: (hidden, *gates)."""
    def body(carry, x):
        carry = step(carry, x, _project(carry[-1], w, x.dtype))
        return carry, carry[-1]

    return jax.lax.scan(body, carry, xs, unroll=unroll)[1]


def _forward(step, w, xs, carry, unroll):
    """The outputs, and as residuals each step's vjp: the gate activations the backward loop reuses."""
    def body(carry, x):
        carry, vjp = jax.vjp(step, carry, x, _project(carry[-1], w, x.dtype))
        return carry, (carry[-1], vjp)

    _, (hs, vjps) = jax.lax.scan(body, carry, xs, unroll=unroll)
    return hs, (w, carry, hs, vjps)


def _backward(_step, unroll, residuals, d_hs):
    w, carry0, hs, vjps = residuals

    def body(d_carry, inputs):
        vjp, d_h = inputs
        d_prev, dx, dz = vjp((*d_carry[:-1], d_carry[-1] + d_h))
        dh = jnp.tensordot(dz, w.astype(dz.dtype), axes=(tuple(range(1, dz.ndim)), tuple(range(1, w.ndim))))
        # A cell that adds the two projections (the LSTM's x + z) gets one cotangent for both: stacked once,
        # not into a second (T, batch, gates) buffer written every step.
        return (*d_prev[:-1], d_prev[-1] + dh.astype(d_prev[-1].dtype)), ((dz,) if dx is dz else (dx, dz))

    d_carry0, stacked = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, carry0), (vjps, d_hs), reverse=True,
                                     unroll=unroll)
    dxs, dzs = stacked[0], stacked[-1]
    # The recurrent weight's gradient: one contraction of h_{t-1} and dz_t over time and batch, after the loop.
    previous = jnp.concatenate([carry0[-1][None], hs[:-1]])
    dw = jnp.tensordot(previous.astype(dzs.dtype), dzs, axes=((0, 1), (0, 1)))
    return dw.astype(w.dtype), dxs, d_carry0


scan.defvjp(_forward, _backward)
