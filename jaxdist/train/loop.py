"""The train loop, top to bottom: mesh -> data -> model and sharded state -> compiled steps -> loop.

Everything that can reject the config (mesh, batch split, dataset) runs before anything is written to
the workdir, so a bad command line never touches an earlier run's files.
"""
import collections
import contextlib
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from jaxdist.config import eval_batch_size, warmup_steps
from jaxdist.data import pipeline, sources
from jaxdist.errors import ConfigError
from jaxdist.models.registry import SEQUENCE_MODELS
from jaxdist.parallel import bn_groups, collectives
from jaxdist.parallel import mesh as mesh_lib
from jaxdist.parallel import pipeline as pipeline_lib
from jaxdist.parallel import report as report_lib
from jaxdist.parallel import sharding as sharding_lib
from jaxdist.parallel import spatial
from jaxdist.parallel import sync as sync_lib
from jaxdist.train import checkpoint, memory, optim, preemption
from jaxdist.train import goodput as goodput_lib
from jaxdist.train import watchdog as watchdog_lib
from jaxdist.train import state as state_lib
from jaxdist.train import step as step_lib
from jaxdist.train import workdir as workdir_lib
from jaxdist.train.metrics import MetricsWriter, write_eval
from jaxdist.train.window import NonFiniteError, TrainWindow


@dataclasses.dataclass
class Experiment:
    """What train and eval both need, built and checked before the workdir is touched."""
    config: object
    mesh: jax.sharding.Mesh
    data: sources.Dataset
    model: state_lib.Model
    tx: object
    shardings: dict  # of the train state, as the sync mode lays it out
    abstract_state: dict
    batch_shardings: sharding_lib.BatchShardings
    sync: object  # parallel/sync.py: how replicas combine their work
    forward: object  # the training forward pass, BatchNorm grouped as config.model.bn_group says


class InflightSteps:
    """Keeps at most `limit` dispatched steps unfinished: `add(out)` after each dispatch blocks on the step
    `limit` back. The device pipeline stays full, but the host never runs far ahead. Needed on CPU: XLA's
    CPU client (jaxlib 0.10.2) sizes its launch thread pool to one thread per device, and a launch blocks a
    thread while its device already has 32 computations in flight, so ~32 multi-device steps dispatched
    ahead leave no thread to run the oldest one: the collectives wait forever and XLA aborts ("Expected 8
    threads to join the rendezvous"). Measured: the CNN on digits after ~300 unsynced steps, an LSTM
    (slower per step) within 100. docs/rnn.md."""

    def __init__(self, limit: int = 8):
        self.limit, self._outputs = limit, collections.deque()

    def add(self, output) -> None:
        self._outputs.append(output)
        if len(self._outputs) > self.limit:
            jax.block_until_ready(self._outputs.popleft())


def run_step(exp: Experiment, train_steps: dict, step: int, state: dict, batch: dict, inflight: InflightSteps,
             window: TrainWindow):
    """Train step `step` (1-based) as the loop runs it, shared with jaxdist.bench so that it times the same
    thing: the sync mode's variant for the step, dispatched without waiting for it (only for the step
    `inflight.limit` back), its metrics left on device in `window` until a log point reads them."""
    state, metrics = train_steps[exp.sync.variant_at(step)](state, batch)
    inflight.add(metrics["loss"])
    window.add(step, metrics)
    return state, metrics


def build_experiment(config, devices=None) -> Experiment:
    # --- Mesh and input sharding (devices: default all; tests pass a subset)
    mesh = mesh_lib.build_mesh(config.mesh, devices)
    rows = sharding_lib.batch_sharding(config, mesh)
    # --- Data
    data = sources.load(config.data, config.model.num_classes, config.seed)
    if config.model.num_classes != data.num_classes:
        raise ConfigError(f"model.num_classes={config.model.num_classes} but {config.data.name} has "
                          f"{data.num_classes} classes; set --config.model.num_classes={data.num_classes}")
    if data.train.lengths is not None and config.model.name not in SEQUENCE_MODELS:
        raise ConfigError(f"{config.data.name} has sequences of different lengths (padded, with a mask), which "
                          f"model {config.model.name!r} cannot take; use one of: {', '.join(SEQUENCE_MODELS)}")
    batches = sharding_lib.BatchShardings(rows, spatial.image_sharding(config, mesh, data.image_shape, rows))
    # --- Model, optimizer, shardings of the whole state (abstract: nothing allocated yet)
    model = state_lib.Model.create(config, data.image_shape, data.num_classes, mesh)
    pipeline_lib.validate(config, mesh, model.stack_depth())
    tx = optim.build(config)
    sync = sync_lib.build(config, mesh)
    abstract = sync.shapes(state_lib.abstract_state(model, tx))
    shardings = sharding_lib.state_shardings(sync.names(model.logical_names()), abstract, tx, mesh,
                                             config.sharding_rules)
    return Experiment(config, mesh, data, model, tx, shardings, abstract, batches, sync,
                      bn_groups.forward(config, mesh, model, sync))


def init_state(exp: Experiment, weights_from: str = "") -> dict:
    """A fresh train state, born in its shardings: the model's plain state, then the sync mode's layout of
    it. Two programs, so that every mode shares the plain init's (slow to compile: the initialisers' RNG).
    `weights_from` (config.init_from) loads params and batch statistics into the plain state, so a run in
    any sync mode can start from a plain run's weights."""
    c = exp.config
    plain = state_lib.abstract_state(exp.model, exp.tx)
    shardings = sharding_lib.state_shardings(exp.model.logical_names(), plain, exp.tx, exp.mesh, c.sharding_rules)
    state = state_lib.init_state(exp.model, exp.tx, shardings)
    if weights_from:
        state = checkpoint.load_weights(weights_from, state)
    return jax.jit(exp.sync.init, out_shardings=exp.shardings)(state)


def train_batches(exp: Experiment, start: int = 0, stop: int | None = None) -> pipeline.TrainIterator:
    """Global train batches start..stop-1 (default: to total_steps), as the train loop reads them."""
    c = exp.config
    return pipeline.TrainIterator(exp.data.train, c.data, c.batch_size, c.seed, exp.batch_shardings,
                                  start=start, stop=c.total_steps if stop is None else stop)


def log_plan(exp: Experiment) -> None:
    """The plan, before compiling: mesh, per-parameter placement and per-device state bytes."""
    if not mesh_lib.is_primary():
        return
    c = exp.config
    logging.info("mesh %s over %d devices (%s); model %s, data %s %s, global batch %d",
                 mesh_lib.describe(exp.mesh), exp.mesh.size, jax.devices()[0].platform, c.model.name,
                 c.data.name, exp.data.image_shape, c.batch_size)
    for line in sharding_lib.sharding_table(exp.sync.names(exp.model.logical_names())["params"],
                                            exp.abstract_state["params"],
                                            exp.shardings["params"], exp.mesh, c.sharding_rules):
        logging.info("  %s", line)
    if c.schedule.warmup_steps > warmup_steps(c):
        logging.warning("schedule.warmup_steps=%d clipped to total_steps=%d: the learning rate ramps up over the "
                        "whole run", c.schedule.warmup_steps, c.total_steps)
    schedule = pipeline_lib.describe(c, exp.mesh)
    if schedule:
        logging.info("%s", schedule)
    for part in ("params", "opt_state"):
        logging.info("%s: %.2f MiB per device", part,
                     sharding_lib.bytes_per_device(exp.abstract_state[part], exp.shardings[part]) / 2**20)


def abstract_batch(exp: Experiment, size: int, with_mask: bool) -> dict:
    """Shapes, dtypes and shardings of a global batch: what the steps are compiled for."""
    def spec(field, shape, dtype):
        return jax.ShapeDtypeStruct((size, *shape), dtype, sharding=exp.batch_shardings.of(field))
    batch = {"images": spec("images", exp.data.image_shape, np.float32), "labels": spec("labels", (), np.int32)}
    if exp.data.train.lengths is not None:  # variable-length sequences, padded: valid steps per example
        batch["lengths"] = spec("lengths", (), np.int32)
    return {**batch, "mask": spec("mask", (), np.float32)} if with_mask else batch


def train_step_fn(exp: Experiment, variant: str):
    """The train step the sync mode runs as `variant`, as a Python function (what compile_train_step compiles)."""
    c = exp.config
    return step_lib.make_train_step(exp.model, exp.tx, c.optimizer.grad_accum_steps, c.log_grad_norm,
                                    nan_guard=c.nan_policy != "off", forward=exp.forward, sync=exp.sync,
                                    variant=variant)


def lower_train_step(exp: Experiment) -> dict:
    """{variant: lowered step} for the sync mode's variants: compile_train_step compiles them, and the
    parallel report reads the model's FLOPs off the last one without tracing the step again."""
    batch = abstract_batch(exp, exp.config.batch_size, with_mask=False)
    return {variant: step_lib.lower_step(train_step_fn(exp, variant), exp.shardings, exp.abstract_state, batch,
                                         train=True) for variant in exp.sync.variants}


def compile_train_step(exp: Experiment, lowered: dict | None = None) -> dict:
    """{variant: compiled step} for the sync mode's variants; step k runs `exp.sync.variant_at(k)`."""
    return {variant: step.compile() for variant, step in (lowered or lower_train_step(exp)).items()}


def parallel_report(exp: Experiment, train_steps: dict, model_flops: float | None = None) -> dict:
    """The parallel report of the last variant (the one with the most communication: local_sgd's 'sync'),
    plus, with several variants, each one's collective bytes and its share of this run's steps.
    `model_flops`: of the last variant's unpartitioned step (report.model_flops), for MFU."""
    last = exp.sync.variants[-1]
    report = report_lib.build(exp, train_steps[last], model_flops)
    if len(train_steps) > 1:
        runs = collections.Counter(exp.sync.variant_at(k) for k in range(1, exp.config.total_steps + 1))
        report["variants"] = {v: {"share_of_steps": runs[v] / exp.config.total_steps,
                                  "collective_bytes_per_step": collectives.collective_bytes(s.as_text())}
                              for v, s in train_steps.items()}
    return report


def compile_eval_step(exp: Experiment):
    return step_lib.lower_step(step_lib.make_eval_step(exp.model, exp.sync.model_variables), exp.shardings,
                               exp.abstract_state, abstract_batch(exp, eval_batch_size(exp.config), with_mask=True),
                               train=False).compile()


def compile_steps(exp: Experiment):
    """(train steps by variant, eval step, model FLOPs of the last train variant for the parallel report)."""
    t0 = time.perf_counter()
    lowered = lower_train_step(exp)
    train_steps, eval_step = compile_train_step(exp, lowered), compile_eval_step(exp)
    memory = max(getattr(s.memory_analysis(), "temp_size_in_bytes", 0) for s in train_steps.values())
    if mesh_lib.is_primary():
        logging.info("compiled train (%s) and eval steps in %.1fs; train step temp memory %.1f MiB per device",
                     ", ".join(train_steps), time.perf_counter() - t0, memory / 2**20)
    return train_steps, eval_step, report_lib.model_flops(lowered[exp.sync.variants[-1]])


def evaluate(exp: Experiment, eval_step, state, beat=None) -> dict[str, float]:
    """Loss and accuracy over the whole test split, each example counted once. `beat()`: after each batch
    (the watchdog's progress)."""
    totals, size = None, eval_batch_size(exp.config)
    batches = pipeline.eval_batches(exp.data.test, exp.config.data, size, exp.batch_shardings)
    with contextlib.closing(batches), progress_bar(-(-exp.data.test.size // size), 0, "eval", unit="batch",
                                                   leave=False) as progress:
        while (batch := pipeline.next_batch(batches, "the test split")) is not None:
            sums = eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            progress.update()
            if beat:
                beat()
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]),
            "accuracy": float(totals["correct"] / totals["count"]), "examples": int(totals["count"])}


def train_and_evaluate(config, workdir: str, started: float | None = None) -> dict[str, float]:
    """`started`: time.monotonic() when the process started (jaxdist.main), where goodput.json's wall
    time begins; default: now."""
    goodput = goodput_lib.Goodput(workdir, time.monotonic() if started is None else started, mesh_lib.is_primary())
    exp = build_experiment(config)
    workdir_lib.check_writable(workdir)
    state_bytes = sum(sharding_lib.bytes_per_device(exp.abstract_state[k], exp.shardings[k]) for k in exp.abstract_state)
    memory.check_before_compile(config, exp.data.image_shape, state_bytes, batches_in_flight=config.data.prefetch + 2)
    with workdir_lib.hold(workdir, mesh_lib.is_primary()):
        start = resume_step(exp, workdir)
        log_plan(exp)
        goodput.mark("init")
        with goodput.timing("compile"):
            t0 = time.perf_counter()
            train_steps, eval_step, model_flops = compile_steps(exp)
            compile_s = time.perf_counter() - t0
            report = parallel_report(exp, train_steps, model_flops)
            if mesh_lib.is_primary():
                for line in report_lib.table(report):
                    logging.info("%s", line)
        memory.check_step(config, report["bytes_per_device"]["total"])
        with goodput.timing("init"):
            state, batches = initial_state(exp, workdir, start)
        goodput.resumed(start)
        return _train(exp, workdir, start, state, batches, train_steps, eval_step, report, compile_s, goodput)


def resume_step(exp: Experiment, workdir: str) -> int:
    """The checkpoint step this run resumes from (0: none), checked before compiling: a checkpoint of
    another model, batch or optimizer, one beyond total_steps, or an unreadable init_from is refused."""
    c, directory = exp.config, os.path.join(workdir, "checkpoints")
    start = 0
    if os.path.isdir(directory):
        with checkpoint.Checkpointer(directory, 1, read_only=True) as saved:
            start = saved.latest_step() or 0
            if start:
                saved.check_compatible(start, c, exp.abstract_state, exp.sync.check_checkpoint)
    if start > c.total_steps:
        raise ConfigError(f"total_steps={c.total_steps} is below step {start}, the latest checkpoint in {directory}; "
                          f"set --config.total_steps={start} or more to resume, or use --mode=eval, or a new --workdir")
    if not start and c.init_from:
        checkpoint.check_weights(c.init_from)
    return start


def initial_state(exp: Experiment, workdir: str, start: int):
    """(train state, train batches from `start`): restored from checkpoint `start` (state and data
    position), or initialised into the shardings. Before the workdir's checkpoint manager exists, so a
    failed read leaves no empty checkpoints/ behind."""
    c, batches = exp.config, train_batches(exp, start)
    if not start:
        return init_state(exp, c.init_from), batches
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), 1, read_only=True) as saved:
        state, data_state = saved.restore(start, exp.abstract_state, exp.shardings)
    batches.check_resumable(data_state)
    logging.info("resumed from step %d in %s%s", start, workdir,
                 " (init_from is ignored when resuming)" if c.init_from else "")
    return state, batches


def _train(exp: Experiment, workdir: str, start: int, state, batches, train_steps: dict, eval_step, report: dict,
           compile_s: float, goodput: goodput_lib.Goodput) -> dict[str, float]:
    """The loop from step `start` + 1 to total_steps: log, evaluate, save, stop on a signal. Each phase's
    time goes to `goodput`, written at every log point and at the end, also when the run stops early."""
    try:
        final, best, window, loop_start = _loop(exp, workdir, start, state, batches, train_steps, eval_step, report,
                                                compile_s, goodput)
    finally:
        total = goodput.write()
    if mesh_lib.is_primary():
        c = exp.config
        skipped = f"; {window.skipped_total} non-finite updates skipped" if c.nan_policy == "skip" else ""
        logging.info("done: %d steps (%d this run) in %.1fs; test loss %.4f, accuracy %.4f over %d examples%s",
                     c.total_steps, c.total_steps - start, time.monotonic() - loop_start,
                     final["loss"], final["accuracy"], final["examples"], skipped)
        logging.info("%s", written(workdir, f"{workdir}/checkpoints", best))
        logging.info("%s (%s)", goodput_lib.summary(total), goodput_lib.FILE)
    return final


def _loop(exp: Experiment, workdir: str, start: int, state, batches, train_steps: dict, eval_step, report: dict,
          compile_s: float, goodput: goodput_lib.Goodput):
    """(the last eval, the best kept step, the train window, when the loop started)."""
    config = exp.config
    # Leaving this block, also with an error, waits for the async saves in flight.
    with checkpoint.Checkpointer(f"{workdir}/checkpoints", config.keep_checkpoints, config.keep_best_checkpoints,
                                 config.best_metric) as ckpt:
        # The first writes to the workdir: everything before could refuse the run and leave it as it was.
        with MetricsWriter(workdir, mesh_lib.is_primary(), resume_step=start) as writer:
            writer.save_json("classes.json", list(exp.data.class_names))
            writer.save_json("parallel_report.json", report)
            writer.save_json("run.json", run_facts(exp, compile_s))

            # --- Train loop: no host sync except at log, eval and checkpoint points
            final = None  # the latest eval; the last step always evaluates
            window = TrainWindow(config.batch_size, config.total_steps, config.nan_policy, report["ideal_step_s"])
            loop_start = last_save = time.monotonic()
            inflight = InflightSteps()
            progress = progress_bar(config.total_steps, start, "train")
            goodput.loop_started()
            # The input pipeline closes first, watched: a reader that never returns trips the watchdog.
            with preemption.StopRequests() as stops, progress, watchdog_lib.Watchdog(config) as watchdog, \
                    contextlib.closing(batches):
                for step in range(start + 1, config.total_steps + 1):
                    with goodput.timing("checkpoint"):
                        ckpt.check_saves()  # a failed async save stops the run here (CheckpointWriteError)
                    with goodput.timing("data_wait"):
                        batch = window.next_batch(batches, f"the batch of step {step}")
                    watchdog.inject_stall(step)
                    state, metrics = run_step(exp, train_steps, step, state, batch, inflight, window)
                    watchdog.beat("train", step)
                    goodput.step_done(step)
                    progress.update()
                    last = step == config.total_steps
                    log_now = step % config.log_every == 0 or last
                    stop_now = stops.requested(step, ckpt, sync_point=log_now)
                    save_now = (last or stop_now or step % config.checkpoint_every == 0
                                or (log_now and _seconds_due(last_save, config.checkpoint_every_seconds)))
                    if log_now or save_now:
                        window.check_finite(ckpt.latest_step())
                    eval_now = step % config.eval_every == 0 or last
                    if (save_now or eval_now) and config.nan_policy != "off" and not bool(all_finite(state)):
                        raise NonFiniteError(step, ckpt.latest_step(), in_state=True)
                    if log_now:
                        progress.clear()
                        summary = window.summary(step)  # waits for the window's steps: step time
                        with goodput.timing("log"):
                            writer.write(step, "train", *summary)
                            goodput.write()
                        progress.refresh()
                    evaluated = None
                    if eval_now:
                        with goodput.timing("eval"):
                            final = evaluated = evaluate(exp, eval_step, state, lambda: watchdog.beat("eval", step))
                        with goodput.timing("log"):
                            writer.write(step, "eval", {**final, "train_s": window.train_seconds()})
                    if save_now:
                        with goodput.timing("checkpoint"):
                            ckpt.save(step, state, config, batches.state(), metrics=evaluated)
                        watchdog.beat("checkpoint", step)
                        last_save = time.monotonic()
                    if stop_now:
                        raise preemption.Preempted(step, ckpt.directory)
                    window.restart_clock_if_empty()

            goodput.loop_ended()
            if final is None:  # resumed a finished run: nothing trained, report the checkpoint (its row is logged)
                with goodput.timing("eval"):
                    final = evaluate(exp, eval_step, state)
            closing = time.monotonic()  # leaving the blocks: the last curves.png, then the saves in flight
        goodput.seconds["log"] += time.monotonic() - closing
        closing = time.monotonic()
        best = ckpt.best_step()
    goodput.seconds["checkpoint"] += time.monotonic() - closing
    return final, best, window, loop_start


def written(workdir: str, checkpoints: str, best: int | None) -> str:
    """The end of a run names what it wrote, and how to look at it."""
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    kept = f"checkpoints {', '.join(map(str, steps))} (latest {steps[-1]}" if steps else "no checkpoints ("
    kept += f", best {best})" if best else ")"
    return (f"wrote {workdir}: metrics.jsonl, curves.png (learning curves), run.json, {kept} in checkpoints/; "
            f"TensorBoard: tensorboard --logdir {workdir}/tensorboard (pip install '.[tensorboard]')")


def progress_bar(total: int, initial: int, what: str, unit: str = "step", leave: bool = True) -> tqdm.tqdm:
    """A bar (step, rate, ETA) on an interactive terminal, on process 0; elsewhere (a file, a cluster log)
    a no-op, and the log lines alone report progress."""
    shown = mesh_lib.is_primary() and sys.stderr.isatty()
    return tqdm.tqdm(total=total, initial=initial, desc=what, unit=unit, leave=leave, disable=not shown,
                     dynamic_ncols=True)


def run_facts(exp: Experiment, compile_s: float) -> dict:
    """What ran, for reading metrics.jsonl later (experiments/ turn steps into epochs and compare meshes)."""
    c = exp.config
    return {"model": c.model.name, "data": c.data.name, "train_examples": exp.data.train.size,
            "test_examples": exp.data.test.size, "global_batch": c.batch_size, "total_steps": c.total_steps,
            "mesh": {a: int(n) for a, n in exp.mesh.shape.items()}, "devices": exp.mesh.size,
            "processes": jax.process_count(), "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind, "compile_s": round(compile_s, 3), "jax": jax.__version__,
            "input": sources.image_input(exp.data)}


@jax.jit
def all_finite(state: dict) -> jax.Array:
    """Whether every float in the train state is finite: read before a save or an eval is reported."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def _seconds_due(last_save: float, every_seconds: float) -> bool:
    """Time-based saving; processes' clocks differ, so process 0 decides for all."""
    due = bool(every_seconds) and time.monotonic() - last_save >= every_seconds
    if jax.process_count() > 1:
        due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
    return due


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
    """--mode=eval: the test split on checkpoint `config.eval_step` (0 = the latest)."""
    exp = build_experiment(config)
    ckpt_dir = f"{workdir}/checkpoints"
    if not os.path.isdir(ckpt_dir):
        raise ConfigError(f"no checkpoints in {ckpt_dir}; train first with --mode=train and the same --workdir")
    with checkpoint.Checkpointer(ckpt_dir, 1, read_only=True) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise ConfigError(f"no checkpoints in {ckpt_dir}; train first with --mode=train and the same --workdir")
        step = config.eval_step or steps[-1]
        if step not in steps:
            raise ConfigError(f"eval_step={step} is not kept in {ckpt_dir}; kept steps: {', '.join(map(str, steps))}")
        ckpt.check_compatible(step, config, exp.abstract_state, exp.sync.check_checkpoint)
        eval_step = compile_eval_step(exp)
        state, _ = ckpt.restore(step, exp.abstract_state, exp.shardings)
    result = evaluate(exp, eval_step, state)
    write_eval(workdir, step, result, mesh_lib.is_primary())
    return result
