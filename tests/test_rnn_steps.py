"""The RNN layers (models/rnn.py, models/recurrence.py) against Flax's cells scanned by nnx.RNN, the
data-parallel step's all-reduces counted per run (as many for 2T time steps as for T), the hand-differentiated
LSTM and GRU steps against JAX's vjp, and the buffers the forward and backward loops stack."""
import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdist.models import recurrence, rnn
from jaxdist.parallel import collectives
from jaxdist.train import loop
from tests.helpers import tiny_config

# Every path of the layer: both LSTM cells and the GRU, one and two directions, both pools, with and
# without padded lengths, unrolled scans.
VARIANTS = {
    "lstm_fused_last": dict(cell="lstm", fused_gates=True),
    "lstm_per_gate_bidirectional_mean_lengths": dict(cell="lstm", fused_gates=False, bidirectional=True,
                                                     pool="mean", lengths=True, unroll=2),
    "lstm_fused_bidirectional_last_lengths": dict(cell="lstm", fused_gates=True, bidirectional=True, lengths=True),
    "gru_last_lengths_unroll3": dict(cell="gru", lengths=True, unroll=3),
    "gru_bidirectional_mean": dict(cell="gru", bidirectional=True, pool="mean"),
}


def flax_reference(net: rnn.RNNClassifier, x, lengths=None):
    """`net`'s own Flax cells run as before models/recurrence.py: scanned by nnx.RNN / nnx.Bidirectional."""
    def zeros(cell):
        return cell.initialize_carry((x.shape[0], cell.in_features), nnx.Rngs(0))

    for layer in net.rnns:
        if isinstance(layer, rnn.Bidirectional):
            cells = layer.forward_rnn.cell, layer.backward_rnn.cell
            scan = nnx.Bidirectional(nnx.RNN(cells[0], rngs=False), nnx.RNN(cells[1], rngs=False), rngs=False)
            carry = tuple(zeros(c) for c in cells)
        else:
            scan, carry = nnx.RNN(layer.cell, rngs=False), zeros(layer.cell)
        carry, x = scan(x, initial_carry=carry, seq_lengths=lengths, return_carry=True)
    if net.pool == "last":
        hidden = [c[1] if isinstance(c, tuple) else c for c in (carry if isinstance(net.rnns[-1], rnn.Bidirectional)
                                                                  else (carry,))]
        x = jnp.concatenate(hidden, -1)
    elif lengths is None:
        x = x.mean(axis=1)
    else:
        valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None]).astype(x.dtype)[..., None]
        x = (x * valid).sum(axis=1) / lengths[:, None]
    return net.head(x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loss_and_gradients_match_flax_cells_scanned_by_nnx_rnn(variant):
    options = dict(VARIANTS[variant])
    with_lengths = options.pop("lengths", False)
    with nnx.use_eager_sharding(False):
        net = rnn.RNNClassifier(num_classes=5, image_shape=(7, 3), rngs=nnx.Rngs(0), hidden_size=6, num_layers=2,
                                **options)
    x = jax.random.normal(jax.random.key(1), (4, 7, 3))
    lengths = jnp.array([7, 5, 2, 1]) if with_lengths else None
    labels = jnp.arange(4)

    def loss(apply):
        return lambda net: -jax.nn.log_softmax(apply(net, x, lengths))[jnp.arange(4), labels].sum()

    loss_new, grads_new = nnx.value_and_grad(loss(lambda net, *args: net(*args)))(net)
    loss_ref, grads_ref = nnx.value_and_grad(loss(flax_reference))(net)
    np.testing.assert_allclose(loss_new, loss_ref, rtol=1e-6)
    assert jax.tree.structure(grads_new) == jax.tree.structure(grads_ref)
    for new, ref in zip(jax.tree.leaves(grads_new), jax.tree.leaves(grads_ref)):
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(new, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(fused_gates=True), dict(fused_gates=False, bidirectional=True),
                                     dict(cell="gru", bidirectional=True)], ids=["lstm", "lstm_cell_bi", "gru_bi"])
def test_parameter_tree_is_nnx_rnns(options):
    """Checkpoints and logical names stay those of the Flax cells inside nnx.RNN / nnx.Bidirectional."""
    options = {"cell": "lstm", **options}
    with nnx.use_eager_sharding(False):
        net = nnx.eval_shape(lambda: rnn.RNNClassifier(num_classes=3, image_shape=(5, 4), rngs=nnx.Rngs(0),
                                                       hidden_size=8, num_layers=2, **options))
    tree = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    flax_tree = {}
    for i, layer in enumerate(net.rnns):
        cells = ({"forward_rnn": layer.forward_rnn.cell, "backward_rnn": layer.backward_rnn.cell}
                 if isinstance(layer, rnn.Bidirectional) else {None: layer.cell})
        wrapped = {k: nnx.RNN(c, rngs=False) for k, c in cells.items()}
        module = (nnx.Bidirectional(wrapped["forward_rnn"], wrapped["backward_rnn"], rngs=False)
                  if None not in wrapped else wrapped[None])
        flax_tree[i] = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    assert shapes["rnns"] == jax.tree.map(lambda a: (a.shape, a.dtype), flax_tree)
    assert set(shapes) == {"rnns", "head"}


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) .*\{$")
_CALLED = re.compile(r"(?P<attr>\w+)=\{?(?P<names>%[\w.\-]+(?:, %[\w.\-]+)*)\}?")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def collectives_per_run(hlo_text: str) -> collections.Counter:
    """{kind: count} of the collectives one run of the HLO executes: those in a while loop's body count
    once per trip (parallel/collectives.py counts each instruction once)."""
    bodies, entry, name = {}, None, None
    for line in hlo_text.splitlines():
        if m := _COMPUTATION.match(line):
            name, bodies[m["name"]] = m["name"], []
            entry = name if line.startswith("ENTRY") else entry
        elif line == "}":
            name = None
        elif name:
            bodies[name].append(line)

    def count(name: str) -> collections.Counter:
        out = collections.Counter(c.kind for c in collectives.parse("\n".join(bodies[name])))
        for line in bodies[name]:
            trips = _TRIPS.search(line)
            for m in _CALLED.finditer(line):
                runs = int(trips[1]) if m["attr"] == "body" and trips else 1
                for called in m["names"].split(", "):
                    for kind, n in count(called.lstrip("%")).items():
                        out[kind] += runs * n
        return out
    return count(entry)


def lstm_step_hlo(steps: int, mesh: dict) -> str:
    config = tiny_config("lstm", mesh, **{"data.view": "rows", "model.hidden_size": 16, "model.num_layers": 2,
                                          "data.name": "synthetic", "data.synthetic_shape": (steps, 8, 1),
                                          "data.synthetic_examples": 64})
    exp = loop.build_experiment(config)
    assert exp.data.image_shape == (steps, 8)
    return loop.compile_train_step(exp)["step"].as_text()


def test_data_parallel_lstm_step_reduces_gradients_once_not_per_time_step():
    """data=8: the same all-reduces for 28 and 56 time steps (a scan differentiated by JAX all-reduced the
    recurrent weights' gradients inside the backward loop, once per step: 1 + 2 * T here, 2 layers)."""
    short, long = (collectives_per_run(lstm_step_hlo(t, dict(data=8))) for t in (28, 56))
    assert short["all-reduce"] >= 1
    assert long == short, (short, long)


@pytest.mark.parametrize("split, merge, shape", [(rnn._fused_gates, rnn._merge_fused_gates, (5, 4 * 6)),
                                                  (rnn._per_gate, rnn._merge_per_gate, (5, 4, 6))],
                         ids=["fused", "per_gate"])
@pytest.mark.parametrize("gates_dtype, carry_dtype", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32),
                                                      (jnp.bfloat16, jnp.bfloat16)])
def test_the_hand_differentiated_lstm_step_is_jaxs_vjp_bit_for_bit(split, merge, shape, gates_dtype, carry_dtype):
    """The step the layers run (_sigmoid_tanh_lstm_step) against JAX differentiating the same math
    (_lstm_step): outputs and every cotangent bitwise equal, in mixed precision too (a derivative added
    in another order differs in the last bit)."""
    keys = jax.random.split(jax.random.key(0), 6)
    carry = tuple(jax.random.normal(k, (5, 6), carry_dtype) for k in keys[:2])
    x, z = (2 * jax.random.normal(k, shape, gates_dtype) for k in keys[2:4])
    out_jax, vjp_jax = jax.vjp(functools.partial(rnn._lstm_step, jax.nn.sigmoid, jnp.tanh, split), carry, x, z)
    out_hand, vjp_hand = jax.vjp(functools.partial(rnn._sigmoid_tanh_lstm_step, split, merge), carry, x, z)
    cotangent = tuple(jax.random.normal(k, o.shape, o.dtype) for k, o in zip(keys[4:], out_jax))
    for expected, got in [(out_jax, out_hand), (vjp_jax(cotangent), vjp_hand(cotangent))]:
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("gates_dtype, carry_dtype", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32),
                                                      (jnp.bfloat16, jnp.bfloat16)])
def test_the_hand_differentiated_gru_step_is_jaxs_vjp_bit_for_bit(gates_dtype, carry_dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    carry = (jax.random.normal(keys[0], (5, 6), carry_dtype),)
    x, z = (2 * jax.random.normal(k, (5, 3 * 6), gates_dtype) for k in keys[1:3])
    out_jax, vjp_jax = jax.vjp(functools.partial(rnn._gru_step, jax.nn.sigmoid, jnp.tanh), carry, x, z)
    out_hand, vjp_hand = jax.vjp(rnn._sigmoid_tanh_gru_step, carry, x, z)
    cotangent = (jax.random.normal(keys[3], out_jax[0].shape, out_jax[0].dtype),)
    for expected, got in [(out_jax, out_hand), (vjp_jax(cotangent), vjp_hand(cotangent))]:
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("step, gates, carried, stacks", [
    (functools.partial(rnn._sigmoid_tanh_lstm_step, rnn._fused_gates, rnn._merge_fused_gates), 4, 2, 7),
    (rnn._sigmoid_tanh_gru_step, 3, 1, 6),
], ids=["lstm", "gru"])
def test_the_forward_loop_stacks_only_what_the_backward_reads(step, gates, carried, stacks):
    """Per time step the forward scan keeps h and, for the backward, the LSTM's c_{t-1}, four gates and
    tanh(c_t) (JAX's own vjp of the cell stacked eleven), the GRU's h_{t-1}, r, u, n and its recurrent
    candidate part (JAX's: nine)."""
    T, B, H = 5, 3, 4

    def loss(w, xs):
        return recurrence.scan(step, w, xs, (jnp.zeros((B, H)),) * carried).sum()

    grad = jax.grad(loss, argnums=(0, 1))
    jaxpr = jax.make_jaxpr(grad)(jnp.full((H, gates * H), 0.1), jnp.ones((T, B, gates * H)))
    (forward,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan" and not e.params["reverse"]]
    assert sum(v.aval.shape == (T, B, H) for v in forward.outvars) == stacks


@pytest.mark.parametrize("step, gates, stacked", [
    (functools.partial(rnn._sigmoid_tanh_lstm_step, rnn._fused_gates, rnn._merge_fused_gates), 4, 1),  # x + z
    (functools.partial(rnn._lstm_step, jax.nn.sigmoid, jnp.tanh, rnn._fused_gates), 4, 1),  # JAX's vjp too
    (rnn._sigmoid_tanh_gru_step, 3, 2),  # r scales z's candidate part: two
], ids=["lstm", "lstm_jax_vjp", "gru"])
def test_the_backward_loop_stacks_one_cotangent_where_the_cell_adds_its_two_projections(step, gates, stacked):
    """The LSTM's input and recurrent projections enter as x + z, so their cotangents are one array: the
    backward loop writes it into one (T, batch, gates) buffer, not two (the 1-device LSTM step's
    temporaries: 76.0 MB against 90.7 MB, docs/rnn.md). The GRU's differ and keep both."""
    T, B, H = 5, 3, 4
    carry = (jnp.zeros((B, H)),) * (2 if gates == 4 else 1)

    def loss(w, xs):
        return recurrence.scan(step, w, xs, carry).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(jnp.full((H, gates * H), 0.1), jnp.ones((T, B, gates * H)))
    (backward,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan" and e.params["reverse"]]
    assert sum(v.aval.shape == (T, B, gates * H) for v in backward.outvars) == stacked


@pytest.mark.parametrize("cell", [
    nnx.OptimizedLSTMCell(3, 4, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0)),
    nnx.LSTMCell(3, 4, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0)),
    nnx.GRUCell(3, 4, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0)),
], ids=["fused_lstm", "lstm", "gru"])
def test_a_cell_with_other_activations_is_refused_not_given_the_sigmoid_tanh_backward(cell):
    """The hand-written backwards hold for sigmoid gates and tanh activations only: a cell with others
    (jaxdist builds none today) is refused by name rather than trained with wrong gradients."""
    with pytest.raises(TypeError, match=f"no recurrence for {type(cell).__name__}.*only sigmoid gates and tanh"):
        rnn._parts(cell, jnp.zeros((2, 1, 3)))
