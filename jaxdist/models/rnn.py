"""Recurrent classifiers on sequences (B, time, features): stacked, optionally bidirectional LSTM or GRU
layers with Flax's own cells (`nnx.LSTMCell`, `nnx.OptimizedLSTMCell`, `nnx.GRUCell`) as parameters and
reference, and a dense head on the last state or the mean over valid steps.

Each layer runs its cell the way cuDNN and oneDNN do rather than through `nnx.RNN`: the input projection
of all time steps is one matmul before the loop, the loop does only the recurrent matmul and the gate
math, and the recurrent weight's gradient is one matmul after it (models/recurrence.py), so data
parallelism reduces every weight gradient once per train step instead of once per time step. The LSTM
and GRU cells' steps are differentiated by hand, so the loop keeps six (GRU: five) arrays per time step for
the backward where JAX's own vjp keeps eleven (nine). The parameter tree is the one `nnx.RNN` / `nnx.Bidirectional` give
(`rnns/0/cell/...`, `rnns/0/forward_rnn/cell/...`), so checkpoints and logical names are unchanged;
tests/test_rnn.py checks losses and gradients against the cells scanned by `nnx.RNN`.

Images become sequences with `data.view='rows'` (one step per image row); `data.name='ucr'` gives real
time series, padded to one length, with the valid lengths passed in as `lengths`.

Logical names (parallel/rules.py), given through the cells' initializers as in layers.py: every kernel is
('embed', 'hidden') and every bias ('hidden',), so 'model' splits the kernels' output columns (column
parallel), 'fsdp' splits their input rows, and the head is ('hidden', 'classes') like the CNN's, one
all-reduce at the end. With per-gate kernels (nnx.LSTMCell, fused_gates=False) every gate's hidden units
split and the cell's elementwise math stays on the device (one all-gather of h per step); the fused cells'
(in, G*hidden) kernels split the concatenated gates in contiguous blocks, which GSPMD then reshuffles each
step (docs/rnn.md, "Sharding").

The carries are zeros made on every call, never stored: the model's state is nnx.Param only, which is
what train/state.py's Model keeps.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.recurrent import flip_sequences

from jaxdist.errors import ConfigError
from jaxdist.models import layers, recurrence

POOLS = ("last", "mean")
# config.model fields the RNN constructors read (registry.options passes them in).
OPTIONS = ("hidden_size", "num_layers", "bidirectional", "pool", "fused_gates", "unroll")


def _cell(kind: str, in_features: int, hidden: int, rngs: nnx.Rngs, dtype, fused_gates: bool):
    if kind == "lstm":
        # Orthogonal recurrent kernels, as both Flax LSTM cells do by default (LSTMCell per gate).
        cls, recurrent = ((nnx.OptimizedLSTMCell, nnx.initializers.orthogonal()) if fused_gates else
                          (nnx.LSTMCell, nnx.nn.recurrent.modified_orthogonal))
    elif kind == "gru":
        cls, recurrent = nnx.GRUCell, nnx.initializers.orthogonal()
    else:
        raise ValueError(kind)
    return cls(in_features, hidden, dtype=dtype, rngs=rngs,
               kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "hidden")),
               recurrent_kernel_init=nnx.with_partitioning(recurrent, ("embed", "hidden")),
               bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("hidden",)))


def _lstm_step(gate_fn, activation_fn, split, carry, x, z):
    """nnx.LSTMCell's and nnx.OptimizedLSTMCell's math on (input + recurrent) pre-activations."""
    c, _ = carry
    i, f, g, o = split(x + z)
    c = gate_fn(f) * c + gate_fn(i) * activation_fn(g)
    return c, gate_fn(o) * activation_fn(c)


def _d_sigmoid(d, s):
    """The cotangent through s = sigmoid(a): lax.logistic's derivative rule, d * (s * (1 - s))."""
    return d.astype(s.dtype) * (s * (1 - s))


def _d_tanh(d, t):
    """The cotangent through t = tanh(a): lax.tanh's rule (d + d * t) * (1 - t), transposed as JAX does."""
    d = d.astype(t.dtype) * (1 - t)
    return d + d * t


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sigmoid_tanh_lstm_step(split, merge, carry, x, z):
    """_lstm_step with the cells' default gate (sigmoid) and activation (tanh), the ones _cell builds,
    differentiated by hand so that its backward keeps six arrays per time step: c_{t-1}, the four activated
    gates and tanh(c_t). JAX's vjp of the same math keeps eleven (s and 1 - s for each sigmoid, t and 1 - t
    for each tanh), and the recurrence stacks every one for all T steps (the 1-device seqmnist LSTM step:
    57.7 MB of temporaries instead of 76.0, docs/rnn.md). The backward applies JAX's own derivative rules
    in JAX's order, so the gradients are bit for bit the same (tests/test_rnn_steps.py). `merge` undoes
    `split`."""
    return _lstm_step(jax.nn.sigmoid, jnp.tanh, split, carry, x, z)


def _sigmoid_tanh_lstm_forward(split, merge, carry, x, z):
    c, _ = carry
    i, f, g, o = split(x + z)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_next = f * c + i * g
    tanh_c = jnp.tanh(c_next)
    return (c_next, o * tanh_c), (c, i, f, g, o, tanh_c)


def _sigmoid_tanh_lstm_backward(split, merge, residuals, cotangents):
    c, i, f, g, o, tanh_c = residuals
    d_c, d_h = cotangents
    u = (o * d_h).astype(tanh_c.dtype) * (1 - tanh_c)
    d_c = d_c + u.astype(d_c.dtype) + (u * tanh_c).astype(d_c.dtype)  # _d_tanh's sum, in the order JAX adds
    d_ig = d_c.astype(jnp.result_type(i, g))  # i * g is computed in the gates' dtype, then added to f * c
    d_a = merge([_d_sigmoid(d_ig * g, i), _d_sigmoid(d_c * c, f), _d_tanh(i * d_ig, g), _d_sigmoid(d_h * tanh_c, o)])
    # x and z enter as x + z: one cotangent for both (models/recurrence.py stacks it once); h_{t-1} only
    # through z, which the recurrence differentiates.
    return ((f * d_c).astype(c.dtype), None), d_a, d_a


_sigmoid_tanh_lstm_step.defvjp(_sigmoid_tanh_lstm_forward, _sigmoid_tanh_lstm_backward)


def _gru_step(gate_fn, activation_fn, carry, x, z):
    """nnx.GRUCell's math: the reset gate scales the recurrent part of the candidate only."""
    (h,) = carry
    x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(z, 3, axis=-1)
    r, u = gate_fn(x_r + h_r), gate_fn(x_z + h_z)
    n = activation_fn(x_n + r * h_n)
    return ((1.0 - u) * n + u * h,)


@jax.custom_vjp
def _sigmoid_tanh_gru_step(carry, x, z):
    """_gru_step with the cell's default gate (sigmoid) and activation (tanh), differentiated by hand as
    _sigmoid_tanh_lstm_step is: its backward keeps five arrays per time step (h_{t-1}, r, u, n and the
    recurrent candidate part) where JAX's vjp keeps nine, with the same bits (tests/test_rnn_steps.py)."""
    return _gru_step(jax.nn.sigmoid, jnp.tanh, carry, x, z)


def _sigmoid_tanh_gru_forward(carry, x, z):
    (h,) = carry
    x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(z, 3, axis=-1)
    r, u = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return ((1.0 - u) * n + u * h,), (h, r, u, n, h_n)


def _sigmoid_tanh_gru_backward(residuals, cotangents):
    h, r, u, n, h_n = residuals
    (d_next,) = cotangents
    d_un = d_next.astype(jnp.result_type(u, n))  # (1 - u) * n is computed in the gates' dtype, then added
    d_u = (d_next * h).astype(u.dtype) + -(d_un * n)  # u * h, then 1 - u: JAX's two terms, JAX's order
    d_n = _d_tanh((1.0 - u) * d_un, n)
    d_gate_r, d_gate_u = _d_sigmoid(d_n * h_n, r), _d_sigmoid(d_u, u)
    dx = jnp.concatenate([d_gate_r, d_gate_u, d_n], axis=-1)
    dz = jnp.concatenate([d_gate_r, d_gate_u, r * d_n], axis=-1)
    return ((u * d_next).astype(h.dtype),), dx, dz


_sigmoid_tanh_gru_step.defvjp(_sigmoid_tanh_gru_forward, _sigmoid_tanh_gru_backward)


def _fused_gates(a):
    return jnp.split(a, 4, axis=-1)  # (..., 4 * hidden): i, f, g, o in contiguous blocks, as Flax splits


def _merge_fused_gates(gates):
    return jnp.concatenate(gates, axis=-1)


def _per_gate(a):
    return [a[..., k, :] for k in range(4)]  # (..., 4, hidden): one row per gate


def _merge_per_gate(gates):
    return jnp.stack(gates, axis=-2)


def _check_activations(cell):
    if (cell.gate_fn, cell.activation_fn) != (jax.nn.sigmoid, jnp.tanh):  # the backwards are theirs alone
        raise TypeError(f"no recurrence for {type(cell).__name__}(gate_fn={cell.gate_fn}, activation_fn="
                        f"{cell.activation_fn}): only sigmoid gates and tanh activations")


def _lstm(cell, split, merge):
    _check_activations(cell)
    return functools.partial(_sigmoid_tanh_lstm_step, split, merge)


def _parts(cell, x):
    """(input projections of all steps, recurrent kernel, step) of a Flax cell: x (T, B, in) -> (T, B, *gates).

    The LSTM cells' bias lives in their recurrent Linear; added to the input projection instead it is
    the same sum, computed once for all steps."""
    if isinstance(cell, nnx.OptimizedLSTMCell):
        xs = cell.dense_i(x)
        xs = xs + cell.dense_h.bias[...].astype(xs.dtype)
        return xs, cell.dense_h.kernel[...], _lstm(cell, _fused_gates, _merge_fused_gates)
    if isinstance(cell, nnx.LSTMCell):
        inputs, recurrent = (cell.ii, cell.if_, cell.ig, cell.io), (cell.hi, cell.hf, cell.hg, cell.ho)
        xs = jnp.stack([i(x) for i in inputs], axis=-2)
        xs = xs + jnp.stack([r.bias[...] for r in recurrent]).astype(xs.dtype)
        w = jnp.stack([r.kernel[...] for r in recurrent], axis=-2)  # (hidden, 4, hidden)
        return xs, w, _lstm(cell, _per_gate, _merge_per_gate)
    if isinstance(cell, nnx.GRUCell):
        _check_activations(cell)
        return cell.dense_i(x), cell.dense_h.kernel[...], _sigmoid_tanh_gru_step
    raise TypeError(f"no recurrence for {type(cell).__name__}")


def _at(h, index):
    """h (T, B, H) at time index[b] for each b, as a masked sum: no gather across a sharded batch."""
    pick = jnp.arange(h.shape[0])[:, None] == index[None, :]
    return jnp.where(pick[..., None], h, 0).sum(axis=0)


class Recurrence(nnx.Module):
    """One direction of one layer: the `cell`'s parameters run over time-major sequences (T, B, in).
    Returns the outputs (T, B, H) in input order and the state after each sequence's last valid step."""

    def __init__(self, cell, *, reverse: bool = False, unroll: int = 1):
        self.cell, self.reverse, self.unroll = cell, reverse, unroll

    def __call__(self, x, lengths=None):
        if self.reverse:  # each sequence's valid steps reversed, padding left at the end (as nnx.RNN does)
            x = flip_sequences(x, lengths, num_batch_dims=1, time_major=True)
        xs, w, step = _parts(self.cell, x)
        zeros = jnp.zeros((x.shape[1], self.cell.hidden_features), self.cell.param_dtype)
        carry = (zeros,) * (1 if isinstance(self.cell, nnx.GRUCell) else 2)
        h = recurrence.scan(step, w, xs, carry, self.unroll)
        # Padded steps come after the valid ones, so they never reach the state taken at lengths - 1.
        last = h[-1] if lengths is None else _at(h, lengths - 1)
        if self.reverse:
            h = flip_sequences(h, lengths, num_batch_dims=1, time_major=True)
        return h, last


class Bidirectional(nnx.Module):
    """A forward and a backward Recurrence over the same inputs, outputs and last states concatenated."""

    def __init__(self, forward_rnn: Recurrence, backward_rnn: Recurrence):
        self.forward_rnn, self.backward_rnn = forward_rnn, backward_rnn

    def __call__(self, x, lengths=None):
        (h_f, last_f), (h_b, last_b) = self.forward_rnn(x, lengths), self.backward_rnn(x, lengths)
        return jnp.concatenate([h_f, h_b], -1), jnp.concatenate([last_f, last_b], -1)


class RNNClassifier(nnx.Module):
    def __init__(self, *, cell: str, num_classes: int, image_shape: tuple[int, ...], rngs: nnx.Rngs,
                 dtype=jnp.float32, hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False,
                 pool: str = "last", fused_gates: bool = False, unroll: int = 1):
        if len(image_shape) != 2:
            raise ConfigError(f"model {cell!r} reads sequences (time, features) but the data gives shape "
                              f"{tuple(image_shape)}; set --config.data.view=rows (an image's rows as time steps)")
        if pool not in POOLS:
            raise ConfigError(f"unknown model.pool {pool!r}; valid: {', '.join(POOLS)}")
        if hidden_size < 1 or num_layers < 1 or unroll < 1:
            raise ConfigError(f"model.hidden_size={hidden_size}, model.num_layers={num_layers} and "
                              f"model.unroll={unroll} must be >= 1")
        self.pool = pool
        make_cell = functools.partial(_cell, cell, hidden=hidden_size, rngs=rngs, dtype=dtype, fused_gates=fused_gates)
        rnns, features = [], image_shape[1]
        for _ in range(num_layers):
            if bidirectional:
                rnns.append(Bidirectional(Recurrence(make_cell(features), unroll=unroll),
                                          Recurrence(make_cell(features), reverse=True, unroll=unroll)))
            else:
                rnns.append(Recurrence(make_cell(features), unroll=unroll))
            features = hidden_size * (2 if bidirectional else 1)
        self.rnns = nnx.List(rnns)
        self.head = layers.dense(features, num_classes, rngs, names=("hidden", "classes"), dtype=dtype)

    def __call__(self, x, lengths=None):
        """x: (batch, time, features); lengths: (batch,) valid steps of sequences padded at the end, or None."""
        x = jnp.swapaxes(x, 0, 1)  # time-major: the scans run over the leading axis
        for rnn in self.rnns:
            x, last = rnn(x, lengths)
        if self.pool == "last":
            x = last
        elif lengths is None:
            x = x.mean(axis=0)
        else:
            valid = (jnp.arange(x.shape[0])[:, None] < lengths[None, :]).astype(x.dtype)[..., None]
            x = (x * valid).sum(axis=0) / jnp.maximum(lengths, 1)[:, None].astype(x.dtype)
        return self.head(x)


LSTM = functools.partial(RNNClassifier, cell="lstm")
GRU = functools.partial(RNNClassifier, cell="gru")
