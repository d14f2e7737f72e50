"""The jitted train and eval steps: pure functions of (state, batch), compiled once.

Shardings are explicit on both sides and the state is donated, so a step updates the state in place and
never recompiles. Metrics stay on device; the loop fetches them only at log points.
"""
import jax
import jax.numpy as jnp
import optax

from jaxdist.parallel import sync as sync_lib
from jaxdist.train.state import Model


def _loss_and_stats(forward, params, batch_stats, images, labels, lengths=None):
    logits, new_stats = forward(params, batch_stats, images, lengths)
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    correct = (logits.argmax(-1) == labels).mean()
    return loss, (new_stats, correct)


def make_train_step(model: Model, tx: optax.GradientTransformation, grad_accum_steps: int = 1,
                    grad_norm: bool = True, nan_guard: bool = True, *, forward=None, sync=None,
                    variant: str = "step"):
    """`grad_norm`: log the global gradient norm. `nan_guard`: an update whose loss or gradient is not
    finite is not applied (the state keeps its values, the step counter still advances) and the step
    reports `nonfinite=1`; the loop then stops or counts it (config.nan_policy). Both read the same norm,
    and each takes the form that costs its backend least (parallel/sync.py `_update_if`, `_gradient_norm`;
    measured in docs/benchmarks.md).

    `forward(params, batch_stats, images, lengths)`: the training forward pass (default: the model's;
    parallel/bn_groups.py builds one with grouped BatchNorm statistics). `sync`: how replicas combine
    gradients into an update (parallel/sync.py; default: all-reduce), and `variant` which of its
    compiled variants this step is."""
    forward = forward or (lambda p, s, x, n: model.apply(p, s, x, train=True, lengths=n))
    sync = sync or sync_lib.AllReduce(1, jnp.float32)
    grad_fn = jax.value_and_grad(lambda p, s, x, y, n: _loss_and_stats(forward, p, s, x, y, n), has_aux=True)

    def gradients(params, batch_stats, images, labels, lengths):
        """`lengths`: valid steps of padded sequences (batch['lengths']), or None."""
        if grad_accum_steps == 1:
            (loss, (stats, acc)), grads = grad_fn(params, batch_stats, images, labels, lengths)
            return loss, acc, stats, grads

        # Micro-batch k takes rows k, k+A, k+2A, ... so that each device keeps working on its own rows.
        def micro(x):
            return x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1)

        def body(carry, xy):
            stats, loss_sum, acc_sum, grad_sum = carry
            (loss, (stats, acc)), grads = grad_fn(params, stats, *xy)
            return (stats, loss_sum + loss, acc_sum + acc, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (stats, loss, acc, grads), _ = jax.lax.scan(body, (batch_stats, 0.0, 0.0, zeros),
                                                     (micro(images), micro(labels),
                                                      None if lengths is None else micro(lengths)))
        scale = 1.0 / grad_accum_steps
        return loss * scale, acc * scale, stats, jax.tree.map(lambda g: g * scale, grads)

    def train_step(state, batch):
        updated, loss, accuracy, norm, finite = sync.update(state, batch, gradients, tx, variant, guard=nan_guard)
        metrics = {"loss": loss, "accuracy": accuracy}
        if grad_norm:
            metrics["grad_norm"] = norm
        if nan_guard:
            metrics["nonfinite"] = 1 - finite.astype(jnp.int32)
        return {"step": state["step"] + 1, **updated}, metrics

    return train_step


def make_eval_step(model: Model, variables=None):
    """`variables(state)`: the {'params', 'batch_stats'} to evaluate (parallel/sync.py model_variables)."""
    def eval_step(state, batch):
        """Sums over the unmasked rows, so padded rows of the last batch count for nothing."""
        model_state = variables(state) if variables else state
        logits, _ = model.apply(model_state["params"], model_state["batch_stats"], batch["images"], train=False,
                                lengths=batch.get("lengths"))
        logits = logits.astype(jnp.float32)
        mask = batch["mask"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = logits.argmax(-1) == batch["labels"]
        return {"loss_sum": (loss * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}

    return eval_step


def lower_step(step, state_shardings, abstract_state, abstract_batch, *, train: bool) -> jax.stages.Lowered:
    """`step(state, batch)` lowered for AOT compiling with explicit shardings (the batch's are those its
    abstract arrays carry); the compiled object cannot silently retrace. A train step returns the state in its shardings
    and takes it donated, so it updates in place; both return their metrics replicated."""
    replicated = jax.sharding.NamedSharding(state_shardings["step"].mesh, jax.sharding.PartitionSpec())
    batch_shardings = {field: array.sharding for field, array in abstract_batch.items()}
    out_shardings, donate = ((state_shardings, replicated), 0) if train else (replicated, ())
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings), out_shardings=out_shardings,
                     donate_argnums=donate)
    return jitted.lower(abstract_state, abstract_batch)
