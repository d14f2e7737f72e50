"""Optax optimizer and learning-rate schedule from the config."""
import jax
import optax

from jaxdist.config import warmup_steps
from jaxdist.errors import ConfigError


def peak_lr(config) -> float:
    """The configured lr, linearly scaled by global batch when optimizer.lr_base_batch is set (Goyal et al.)."""
    o = config.optimizer
    return o.lr * config.batch_size / o.lr_base_batch if o.lr_base_batch else o.lr


def schedule(config) -> optax.Schedule:
    s, total, lr = config.schedule, config.total_steps, peak_lr(config)
    warmup = warmup_steps(config)
    if s.name == "constant":
        main = optax.constant_schedule(lr)
    elif s.name == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warmup, 1), alpha=s.final_lr_fraction)
    elif s.name == "step":
        boundaries = {int(f * total) - warmup: s.decay_factor for f in s.decay_steps_fraction}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        raise ConfigError(f"unknown schedule.name {s.name!r}")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params):
    """Weight decay only on kernels: biases and norm scales/offsets (all 1-D) are left alone."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build(config) -> optax.GradientTransformation:
    o, lr = config.optimizer, schedule(config)
    wd = o.weight_decay
    if o.name in ("sgd", "momentum", "nesterov"):
        momentum = None if o.name == "sgd" else o.momentum
        core = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                           optax.sgd(lr, momentum=momentum, nesterov=o.name == "nesterov"))
    elif o.name == "adamw":
        core = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=decay_mask)
    elif o.name == "lars":
        core = optax.lars(lr, weight_decay=wd, weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                          momentum=o.momentum)
    elif o.name == "lamb":
        core = optax.lamb(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=decay_mask)
    else:
        raise ConfigError(f"unknown optimizer.name {o.name!r}")
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), core) if o.clip_norm else core
