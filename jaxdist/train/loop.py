"""The train loop, top to bottom: mesh -> data -> model and sharded state -> compiled steps -> loop.

Everything that can reject the config (mesh, batch split, dataset) runs before anything is written to
the workdir, so a bad command line never touches an earlier run's files.
"""
import dataclasses
import math
import os
import time

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxdist import distributed
from jaxdist.config import ConfigError, eval_batch_size
from jaxdist.data import pipeline, sources
from jaxdist.parallel import mesh as mesh_lib
from jaxdist.parallel import rules as rules_lib
from jaxdist.train import checkpoint, optim
from jaxdist.train import state as state_lib
from jaxdist.train import step as step_lib
from jaxdist.train.metrics import MetricsWriter


@dataclasses.dataclass
class Experiment:
    """What train and eval both need, built and checked before the workdir is touched."""
    config: object
    mesh: jax.sharding.Mesh
    data: sources.Dataset
    model: state_lib.Model
    tx: object
    shardings: dict
    abstract_state: dict
    batch_sharding: NamedSharding


def batch_sharding(config, mesh) -> NamedSharding:
    """Batch dim split over the 'batch' rule's mesh axes; refuses sizes those axes do not divide."""
    axes = [a for a in rules_lib.mesh_axes_for("batch", config.sharding_rules) if mesh.shape[a] > 1]
    shards = math.prod(mesh.shape[a] for a in axes)
    split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes) or "none"
    for name, size in (("batch_size", config.batch_size // config.optimizer.grad_accum_steps),
                       ("eval_batch_size", eval_batch_size(config))):
        if size % shards or size % jax.process_count():
            what = name if name == "eval_batch_size" or config.optimizer.grad_accum_steps == 1 else \
                f"batch_size / optimizer.grad_accum_steps ({config.batch_size}/{config.optimizer.grad_accum_steps})"
            raise ConfigError(f"{what}={size} is not divisible by the {shards} batch shards ({split}) and "
                              f"{jax.process_count()} processes; use a multiple of {math.lcm(shards, jax.process_count())}")
    return NamedSharding(mesh, PartitionSpec(tuple(axes) or None))


def build_experiment(config, devices=None) -> Experiment:
    # --- Mesh and input sharding (devices: default all; tests pass a subset)
    mesh = mesh_lib.build_mesh(config.mesh, devices)
    batches = batch_sharding(config, mesh)
    # --- Data
    data = sources.load(config.data, config.model.num_classes, config.seed)
    if config.model.num_classes != data.num_classes:
        raise ConfigError(f"model.num_classes={config.model.num_classes} but {config.data.name} has "
                          f"{data.num_classes} classes; set --config.model.num_classes={data.num_classes}")
    # --- Model, optimizer, shardings of the whole state (abstract: nothing allocated yet)
    model = state_lib.Model.create(config, data.image_shape, data.num_classes)
    tx = optim.build(config)
    shardings = state_lib.state_shardings(model, tx, mesh, config.sharding_rules)
    return Experiment(config, mesh, data, model, tx, shardings, state_lib.abstract_state(model, tx), batches)


def train_batches(exp: Experiment, start: int = 0, stop: int | None = None) -> pipeline.TrainIterator:
    """Global train batches start..stop-1 (default: to total_steps), as the train loop reads them."""
    c = exp.config
    return pipeline.TrainIterator(exp.data.train, c.data, c.batch_size, c.seed, exp.batch_sharding,
                                  start=start, stop=c.total_steps if stop is None else stop)


def log_plan(exp: Experiment) -> None:
    """The plan, before compiling: mesh, per-parameter placement and per-device state bytes."""
    if not distributed.is_primary():
        return
    c = exp.config
    logging.info("mesh %s over %d devices (%s); model %s, data %s %s, global batch %d",
                 mesh_lib.describe(exp.mesh), exp.mesh.size, jax.devices()[0].platform, c.model.name,
                 c.data.name, exp.data.image_shape, c.batch_size)
    for line in state_lib.sharding_table(exp.model, exp.shardings, exp.mesh, c.sharding_rules):
        logging.info("  %s", line)
    for part in ("params", "opt_state"):
        logging.info("%s: %.2f MiB per device", part,
                     state_lib.bytes_per_device(exp.abstract_state[part], exp.shardings[part]) / 2**20)


def abstract_batch(exp: Experiment, size: int, with_mask: bool) -> dict:
    """Shapes, dtypes and shardings of a global batch: what the steps are compiled for."""
    def spec(shape, dtype):
        return jax.ShapeDtypeStruct((size, *shape), dtype, sharding=exp.batch_sharding)
    batch = {"images": spec(exp.data.image_shape, np.float32), "labels": spec((), np.int32)}
    return {**batch, "mask": spec((), np.float32)} if with_mask else batch


def compile_train_step(exp: Experiment):
    c = exp.config
    return step_lib.compile_train_step(
        step_lib.make_train_step(exp.model, exp.tx, c.optimizer.grad_accum_steps, c.log_grad_norm),
        exp.shardings, exp.batch_sharding, exp.abstract_state, abstract_batch(exp, c.batch_size, with_mask=False))


def compile_eval_step(exp: Experiment):
    return step_lib.compile_eval_step(
        step_lib.make_eval_step(exp.model), exp.shardings, exp.batch_sharding, exp.abstract_state,
        abstract_batch(exp, eval_batch_size(exp.config), with_mask=True))


def compile_steps(exp: Experiment):
    t0 = time.perf_counter()
    train_step, eval_step = compile_train_step(exp), compile_eval_step(exp)
    memory = train_step.memory_analysis()
    if distributed.is_primary():
        logging.info("compiled train and eval steps in %.1fs; train step temp memory %.1f MiB per device",
                     time.perf_counter() - t0, getattr(memory, "temp_size_in_bytes", 0) / 2**20)
    return train_step, eval_step


def evaluate(exp: Experiment, eval_step, state) -> dict[str, float]:
    """Loss and accuracy over the whole test split, each example counted once."""
    totals = None
    for batch in pipeline.eval_batches(exp.data.test, exp.config.data, eval_batch_size(exp.config),
                                       exp.batch_sharding):
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]),
            "accuracy": float(totals["correct"] / totals["count"]), "examples": int(totals["count"])}


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    exp = build_experiment(config)
    log_plan(exp)
    train_step, eval_step = compile_steps(exp)

    # --- Restore the latest checkpoint (state and data position), or initialise straight into the shardings
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", config.keep_checkpoints)
    start = ckpt.latest_step() or 0
    batches = train_batches(exp, start)
    if start:
        state, data_state = ckpt.restore(start, exp.abstract_state, exp.shardings)
        batches.check_resumable(data_state)
        logging.info("resumed from step %d in %s", start, workdir)
    else:
        state = state_lib.init_state(config, exp.model, exp.tx, exp.shardings, exp.data.image_shape,
                                     exp.data.num_classes)
    writer = MetricsWriter(workdir, distributed.is_primary())
    writer.save_json("classes.json", list(exp.data.class_names))

    # --- Train loop: no host sync except at log, eval and checkpoint points
    final = None  # the latest eval; the last step always evaluates
    pending, timer_steps, wait_s = [], 0, 0.0
    timer_start = loop_start = time.perf_counter()
    for step in range(start + 1, config.total_steps + 1):
        t = time.perf_counter()
        batch = next(batches)
        wait_s += time.perf_counter() - t
        state, metrics = train_step(state, batch)
        pending.append(metrics)
        timer_steps += 1
        last = step == config.total_steps
        if step % config.log_every == 0 or last:
            means = {k: float(np.mean(v)) for k, v in jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending)).items()}
            elapsed = time.perf_counter() - timer_start
            rate = timer_steps * config.batch_size / elapsed
            eta = (config.total_steps - step) * elapsed / timer_steps
            input_ms = 1e3 * wait_s / timer_steps
            writer.write(step, "train", {**means, "images_per_s": rate, "input_wait_ms": input_ms}, console=(
                f"step {step}/{config.total_steps} | loss {means['loss']:.4f} | acc {means['accuracy']:.4f} | "
                f"{rate:,.0f} img/s | input wait {input_ms:.1f} ms/step | "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"))
            pending, timer_steps, wait_s = [], 0, 0.0
        if step % config.eval_every == 0 or last:
            final = evaluate(exp, eval_step, state)
            writer.write(step, "eval", final)
        if step % config.checkpoint_every == 0 or last:
            ckpt.save(step, state, config, batches.state())
        if timer_steps == 0:  # restart the throughput clock after log, eval or checkpoint work
            timer_start = time.perf_counter()

    if final is None:  # resumed a finished run: nothing trained, report the checkpoint
        final = evaluate(exp, eval_step, state)
        writer.write(config.total_steps, "eval", final)
    ckpt.close()
    writer.close()
    if distributed.is_primary():
        logging.info("done: %d steps (%d this run) in %.1fs; test loss %.4f, accuracy %.4f over %d examples",
                     config.total_steps, config.total_steps - start, time.perf_counter() - loop_start,
                     final["loss"], final["accuracy"], final["examples"])
    return final


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
    exp = build_experiment(config)
    ckpt_dir = f"{workdir}/checkpoints"
    if not os.path.isdir(ckpt_dir):
        raise ConfigError(f"no checkpoints in {ckpt_dir}; train first with --mode=train and the same --workdir")
    eval_step = compile_eval_step(exp)
    ckpt = checkpoint.Checkpointer(ckpt_dir, config.keep_checkpoints)
    step = ckpt.latest_step()
    if step is None:
        raise ConfigError(f"no checkpoints in {ckpt_dir}; train first with --mode=train and the same --workdir")
    state, _ = ckpt.restore(step, exp.abstract_state, exp.shardings)
    result = evaluate(exp, eval_step, state)
    writer = MetricsWriter(workdir, distributed.is_primary())
    writer.write(step, "eval", result)
    writer.close()
    ckpt.close()
    return result
