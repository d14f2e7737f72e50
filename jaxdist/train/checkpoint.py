"""Orbax checkpoints: async saves, last-N plus best-N retention, and restores that check before they load.

A checkpoint holds the train state (step, params, batch statistics, optimizer state), the data
iterator's position and the config as JSON. There is no RNG state to save: every random number
(init, augmentation, order) derives from `config.seed` and the step or stream position.

Restoring passes abstract arrays that carry the *current* shardings, so each array lands directly in
the current mesh's layout, whatever mesh wrote it, without a gather onto one host. Before loading,
the saved config and array shapes are compared with the run's, so a mismatch is one line naming the
fields or arrays rather than a deep Orbax traceback. Nothing here ever deletes a checkpoint except
Orbax's retention policy after a successful save; Orbax writes each step to a temporary directory and
renames it when complete, so a crash mid-write leaves the previous step as the latest.
"""
import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from jaxdist.errors import ConfigError

# Config fields that change what the saved arrays mean: resuming across a change is refused.
IDENTITY_FIELDS = ("model.name", "model.num_classes", "model.pool", "model.bidirectional", "data.name",
                   "data.ucr_name", "data.image_size", "data.view", "optimizer.name", "optimizer.grad_accum_steps",
                   "seed", "batch_size")


def _field(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config.get(key, {}) if isinstance(config, dict) else None
    return config if config != {} else None


class Checkpointer:
    def __init__(self, directory: str, keep: int, keep_best: int = 0, best_metric: str = "accuracy",
                 read_only: bool = False):
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_best:  # among checkpoints taken at eval steps (the only ones with metrics)
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=best_metric == "loss", n=keep_best,
                keep_checkpoints_without_metrics=False))
        self.directory = os.path.abspath(directory)
        # Handlers named up front, so metadata can be read before anything is restored in this process.
        handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=not read_only, read_only=read_only, enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: dict, config, data_state: dict, metrics: dict | None = None) -> None:
        """Starts an async save; training goes on while it writes.

        `data_state` is the train iterator's position (pipeline.TrainIterator.state), the same on every
        process, so one JSON item serves any process count. `metrics` (an eval result) ranks the
        checkpoint for keep_best.
        """
        self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json())),
            data=ocp.args.JsonSave(data_state)))

    def saved_config(self, step: int) -> dict:
        return self._read(step, config=ocp.args.JsonRestore())["config"]

    def check_compatible(self, step: int, config, abstract_state: dict, explain=None) -> None:
        """Raises ConfigError naming the config fields or arrays in which checkpoint `step` differs.

        `explain(saved_config, saved_shapes)`: a strategy's own check (parallel/sync.py
        check_checkpoint), run before the array shapes are compared so that its reason comes first."""
        saved, now = self.saved_config(step), json.loads(config.to_json())
        changed = [f"{f} {_field(saved, f)!r} -> {_field(now, f)!r}" for f in IDENTITY_FIELDS
                   if _field(saved, f) != _field(now, f)]
        if changed:
            raise ConfigError(f"{self.directory} was written by a different config ({'; '.join(changed)}); use a new "
                              f"--workdir, or --config.init_from={os.path.dirname(self.directory)} to start from its weights")
        if explain:
            explain(saved, self.array_shapes(step))
        mismatched = shape_mismatches(self.array_shapes(step), abstract_state)
        if mismatched:
            raise ConfigError(f"checkpoint {self.directory}/{step} does not fit this model: {'; '.join(mismatched[:4])}"
                              f"{' ...' if len(mismatched) > 4 else ''}")

    def array_shapes(self, step: int) -> dict[str, tuple]:
        """'params/conv1/kernel' -> shape for params and batch statistics, and 'opt_state/<i>' for the
        optimizer state's arrays in order, read from the checkpoint's metadata (no array is loaded)."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception as e:  # a missing or corrupt metadata file, whatever Orbax raises for it
            raise self._unreadable(step, e) from None
        return _named_shapes(_as_dict(metadata))

    def restore(self, step: int, abstract_state: dict, shardings: dict) -> tuple[dict, dict]:
        """(train state in the current shardings, data iterator state)."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        restored = self._read(step, state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        return restored["state"], restored["data"]

    def _read(self, step: int, **items):
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # truncated files, bad JSON, missing items: all "this step cannot be read"
            raise self._unreadable(step, e) from None

    def _unreadable(self, step: int, error: Exception) -> ConfigError:
        others = [s for s in self.all_steps() if s != step]
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return ConfigError(f"checkpoint {self.directory}/{step} cannot be read ({type(error).__name__}: {first_line}); "
                           f"nothing was deleted: move that directory away to resume from an earlier step "
                           f"(kept: {others or 'none'})")

    def reached_preemption(self, step: int) -> bool:
        """Multi-process: whether JAX's preemption sync manager has all processes stop at `step`."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # waits for async saves in flight, also when leaving with an error


def _as_dict(tree):
    """Orbax metadata trees may be dict subclasses or custom mappings; flatten_dict wants plain dicts."""
    if hasattr(tree, "items"):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def _named_shapes(state: dict) -> dict[str, tuple]:
    """Params and batch statistics by path; the optimizer state (tuples of optax states) by position."""
    named = traverse_util.flatten_dict({k: state.get(k) or {} for k in ("params", "batch_stats")})
    # Keys are strings in the checkpoint's metadata but ints for list items (ResNet blocks) in the model.
    shapes = {"/".join(map(str, path)): tuple(a.shape) for path, a in named.items() if hasattr(a, "shape")}
    opt = [a for a in jax.tree.leaves(state.get("opt_state")) if hasattr(a, "shape")]
    shapes.update({f"opt_state/{i}": tuple(a.shape) for i, a in enumerate(opt)})
    return shapes


def shape_mismatches(saved_shapes: dict[str, tuple], abstract_state: dict) -> list[str]:
    """'path: checkpoint (a, b) vs model (c, d)' for every array missing on either side or reshaped."""
    wanted = _named_shapes(abstract_state)
    problems = [f"{p}: checkpoint {saved_shapes[p]} vs model {wanted[p]}"
                for p in sorted(wanted) if p in saved_shapes and saved_shapes[p] != wanted[p]]
    problems += [f"{p}: not in the checkpoint" for p in sorted(set(wanted) - set(saved_shapes))]
    problems += [f"{p}: in the checkpoint, not in the model" for p in sorted(set(saved_shapes) - set(wanted))]
    return problems


def find_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoints directory, step) for init_from: a workdir, its checkpoints/ dir, or one step's dir."""
    path = os.path.abspath(path)
    for directory in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(directory):
            steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
            if steps:
                return directory, steps[-1]
    parent, name = os.path.split(path)
    if name.isdigit() and os.path.isdir(path):
        return parent, int(name)
    raise ConfigError(f"init_from={path!r} has no checkpoints; give a workdir, its checkpoints/ directory "
                      "or one step's directory inside it")


def load_weights(path: str, state: dict) -> dict:
    """`state` with params and batch statistics taken from another run's checkpoint (init_from).

    Arrays are matched by name and shape; the others (a new head, a changed layer) keep their fresh
    initialisation and are listed in the log. The optimizer state and step stay fresh: this starts a
    new run from old weights, e.g. to fine-tune with another head or optimizer. Arrays load straight
    into this run's shardings.
    """
    directory, step = find_checkpoint(path)
    source = Checkpointer(directory, 1, read_only=True)
    saved = source.array_shapes(step)
    fresh = traverse_util.flatten_dict({k: state[k] for k in ("params", "batch_stats")}, sep="/")
    taken = {p: a for p, a in fresh.items() if saved.get(p) == a.shape}
    if not any(p.startswith("params/") for p in taken):
        raise ConfigError(f"init_from: checkpoint {directory}/{step} shares no parameter (name and shape) with "
                          f"this model; its params are e.g. {sorted(p for p in saved if p.startswith('params/'))[:3]}")
    target = traverse_util.unflatten_dict(
        {tuple(p.split("/")): jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for p, a in taken.items()})
    source.close()
    try:  # a subset of the saved tree: Orbax's PyTree handler restores only the named arrays
        restored = ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step), "state"), args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    except Exception as e:  # truncated or corrupt files
        raise source._unreadable(step, e) from None
    loaded = traverse_util.flatten_dict(_as_dict(restored), sep="/")
    kept = sorted(set(fresh) - set(taken))
    logging.info("init_from %s/%d: loaded %d arrays%s", directory, step, len(loaded),
                 f"; kept the fresh initialisation of {', '.join(f'{p} {fresh[p].shape}' for p in kept)}" if kept else "")
    merged = traverse_util.unflatten_dict({tuple(p.split("/")): a for p, a in {**fresh, **loaded}.items()})
    return {**state, **merged}
