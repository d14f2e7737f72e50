"""Recurrent classifiers on sequences (B, time, features): stacked, optionally bidirectional LSTM or GRU
layers built from Flax's own cells (`nnx.LSTMCell`, `nnx.OptimizedLSTMCell`, `nnx.GRUCell`) scanned by
`nnx.RNN` / `nnx.Bidirectional`, and a dense head on the last state or the mean over valid steps.

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
what train/state.py's Model keeps (the RNN modules are built with rngs=False for that reason).
"""
import functools

import jax.numpy as jnp
from flax import nnx

from jaxdist.errors import ConfigError
from jaxdist.models import layers

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


def _zero_carry(cell, batch: int):
    # Zeros: the rng key the cell's initialize_carry asks for is not used by its zeros_init.
    return cell.initialize_carry((batch, cell.in_features), nnx.Rngs(0))


def _hidden(carry):
    """h from a cell's carry: LSTM carries are (c, h), GRU carries are h."""
    return carry[1] if isinstance(carry, tuple) else carry


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
        self.pool, self.bidirectional = pool, bidirectional
        make_cell = functools.partial(_cell, cell, hidden=hidden_size, rngs=rngs, dtype=dtype, fused_gates=fused_gates)
        # rngs=False: no RNG state to store. state_axes: the cell's params enter the scan as read-only
        # broadcast constants rather than as part of its carry (nnx.RNN's default); same math. Either way
        # GSPMD all-reduces the data-parallel weight gradients inside the backward loop, once per time step
        # (docs/rnn.md, "Sharding").
        make_rnn = functools.partial(nnx.RNN, unroll=unroll, rngs=False, state_axes=nnx.StateAxes({...: None}))
        rnns, features = [], image_shape[1]
        for _ in range(num_layers):
            if bidirectional:
                rnns.append(nnx.Bidirectional(make_rnn(make_cell(features)), make_rnn(make_cell(features)),
                                              rngs=False))
            else:
                rnns.append(make_rnn(make_cell(features)))
            features = hidden_size * (2 if bidirectional else 1)
        self.rnns = nnx.List(rnns)
        self.head = layers.dense(features, num_classes, rngs, names=("hidden", "classes"), dtype=dtype)

    def __call__(self, x, lengths=None):
        """x: (batch, time, features); lengths: (batch,) valid steps of sequences padded at the end, or None."""
        batch, steps = x.shape[:2]
        for i, rnn in enumerate(self.rnns):
            cells = (rnn.forward_rnn.cell, rnn.backward_rnn.cell) if self.bidirectional else (rnn.cell,)
            carry = tuple(_zero_carry(c, batch) for c in cells)
            last = i == len(self.rnns) - 1 and self.pool == "last"
            # seq_lengths: the backward direction starts at each sequence's last valid step, and with
            # return_carry the carry is taken there, so padded steps never reach the prediction.
            out = rnn(x, initial_carry=carry if self.bidirectional else carry[0], seq_lengths=lengths,
                      return_carry=last)
            if last:
                carry, x = out
                x = jnp.concatenate([_hidden(c) for c in carry], -1) if self.bidirectional else _hidden(carry)
            else:
                x = out
        if self.pool == "mean":
            if lengths is None:
                x = x.mean(axis=1)
            else:
                valid = (jnp.arange(steps)[None, :] < lengths[:, None]).astype(x.dtype)[..., None]
                x = (x * valid).sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(x.dtype)
        return self.head(x)


LSTM = functools.partial(RNNClassifier, cell="lstm")
GRU = functools.partial(RNNClassifier, cell="gru")
