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

Orbax stores arrays without checksums (zarr v2 chunks, zstd; TensorStore checks only OCDBT's own index
files), so a byte changed on disk would load silently. Once a save is complete, the sha256 of every file
of the step goes into CHECKSUMS in the step's directory; a restore checks them first and refuses a changed
file. A failed async save (disk full, read-only directory) stops the run: CheckpointWriteError, exit 4.
"""
import hashlib
import json
import logging as std_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from jaxdist.errors import CheckpointWriteError, ConfigError
from jaxdist.train.preemption import Preempted

CHECKSUMS = "jaxdist_checksums.json"  # {"sha256": {path in the step directory: hex digest}}

# Orbax splits the writing of a replicated array across its replicas by slicing it on each device: one
# compiled slice per array shape and device, which made the first save of a run block the loop for 3.9 s
# (digits CNN) and 7.6 s (ResNet-20) on 8 simulated CPU devices, against 0.07 s and 0.18 s with this floor
# (experiments/first_save_cost.py; docs/checkpoints.md). Arrays whose slice per replica would be smaller
# are written whole by one replica, as on GPU (where Orbax turns replica-parallel writing off); larger
# ones are still split.
REPLICA_PARALLEL_MIN_BYTES = 16 * 2**20
ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
    min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES), override=True)

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
        self.directory, self._keep_best = os.path.abspath(directory), keep_best
        # Handlers named up front, so metadata can be read before anything is restored in this process.
        handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn too: only then does Orbax write each step's metrics to disk, so that a resumed run still
            # ranks the earlier steps (and best_step() ranks by the metric, not the step).
            best_fn=(lambda m: m[best_metric]) if keep_best else None,
            best_mode="min" if best_metric == "loss" else "max",
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            # Created in save(): when that fails, Orbax's async threads would wait 5 minutes for the directory.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))
        self._step = None  # the step last handed to Orbax
        # The latest step known complete, kept here: Orbax takes it off its list as soon as a save that makes
        # one checkpoint too many starts, before that save is known to succeed.
        self._complete = self._manager.latest_step()
        self._unchecked = False  # its async save may still run or have failed; once complete, checksums follow
        self._failed = False  # a CheckpointWriteError was raised: close() has nothing more to report
        self._verified, self._unverified = set(), set()

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
        self._finish_pending()
        self._step, self._unchecked = step, True
        try:
            self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json())),
                data=ocp.args.JsonSave(data_state)))
        except Exception as e:  # e.g. the step's directory cannot be created
            raise self._write_failed(e) from None

    def check_saves(self) -> None:
        """Raises CheckpointWriteError if the last async save failed, so that the run stops at the next step
        instead of training on without checkpoints. Called every step: a flag read while a save is running."""
        if self._unchecked and not self._manager.is_saving_in_progress():
            self._finish_pending()

    def _finish_pending(self) -> None:
        """Waits for the save in flight; raises CheckpointWriteError if it failed, else writes its checksums."""
        if not self._unchecked or self._failed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(e) from None
        self._unchecked, self._complete = False, self._step
        if jax.process_index() == 0:  # one writer; the step's directory holds every process's files by now
            self._write_checksums(self._step)

    def _write_failed(self, error: Exception) -> CheckpointWriteError:
        self._failed = True
        kept = (f"the latest complete checkpoint is step {self._complete}" if self._complete is not None
                else "no checkpoint is complete yet")
        return CheckpointWriteError(f"saving checkpoint {self.directory}/{self._step} failed ({_summary(error)}); "
                                    f"{kept}; free space or fix the directory, then rerun to resume")

    def _write_checksums(self, step: int) -> None:
        """CHECKSUMS for a complete step, written atomically (a crash leaves none, never half of one)."""
        step_dir = os.path.join(self.directory, str(step))
        try:
            digests = {path: _sha256(os.path.join(step_dir, path)) for path in _files(step_dir)}
            with open(os.path.join(step_dir, CHECKSUMS + ".tmp"), "w") as f:
                json.dump({"sha256": digests}, f, indent=0)
            os.replace(os.path.join(step_dir, CHECKSUMS + ".tmp"), os.path.join(step_dir, CHECKSUMS))
        except OSError as e:  # the checkpoint is complete and loads, only unverified; a next save would fail too
            logging.warning("could not write checksums of checkpoint %s (%s); it will load unverified",
                            step_dir, _summary(e))

    def _verify(self, step: int) -> None:
        """Raises ConfigError naming the first file of `step` whose bytes differ from CHECKSUMS. Once per step."""
        step_dir = os.path.join(self.directory, str(step))
        if step in self._verified or not os.path.isdir(step_dir):  # a missing step: Orbax's error says it
            return
        try:
            with open(os.path.join(step_dir, CHECKSUMS)) as f:
                expected = json.load(f)["sha256"]
        except FileNotFoundError:  # said once the step has read (an unreadable one gets its one error line)
            self._unverified.add(step)
            expected = {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise self._unreadable(step, f"{CHECKSUMS}: {_summary(e)}") from None
        for path, digest in expected.items():
            try:
                same = _sha256(os.path.join(step_dir, path)) == digest
            except OSError as e:
                raise self._unreadable(step, f"{path}: {_summary(e)}") from None
            if not same:
                raise self._unreadable(step, f"{path} changed after it was saved: its sha256 differs from {CHECKSUMS}")
        self._verified.add(step)

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
        self._verify(step)
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception as e:  # a missing or corrupt metadata file, whatever Orbax raises for it
            raise self._unreadable(step, e) from None
        self._warn_if_unverified(step)
        return _named_shapes(_as_dict(metadata))

    def restore(self, step: int, abstract_state: dict, shardings: dict) -> tuple[dict, dict]:
        """(train state in the current shardings, data iterator state)."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        restored = self._read(step, state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        return restored["state"], restored["data"]

    def restore_arrays(self, step: int, target: dict) -> dict:
        """Only the arrays `target` names (a subtree of the saved train state, as abstract arrays carrying
        the shardings to load them into), e.g. params and batch statistics without the optimizer state."""
        self._verify(step)
        try:  # Orbax's PyTree handler restores a subset of the saved tree
            restored = ocp.PyTreeCheckpointer().restore(
                os.path.join(self.directory, str(step), "state"),
                args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                            partial_restore=True))
        except Exception as e:  # truncated or corrupt files
            raise self._unreadable(step, e) from None
        self._warn_if_unverified(step)
        return _as_dict(restored)

    def _read(self, step: int, **items):
        self._verify(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # truncated files, bad JSON, missing items: all "this step cannot be read"
            raise self._unreadable(step, e) from None
        self._warn_if_unverified(step)
        return restored

    def _warn_if_unverified(self, step: int) -> None:
        if step in self._unverified:
            self._unverified.discard(step)
            logging.warning("checkpoint %s/%d has no %s (saved before jaxdist wrote checksums, or the run ended "
                            "right after saving it): loaded unverified", self.directory, step, CHECKSUMS)

    def _unreadable(self, step: int, error: Exception | str) -> ConfigError:
        others = [s for s in self.all_steps() if s != step]
        reason = error if isinstance(error, str) else _summary(error)
        return ConfigError(f"checkpoint {self.directory}/{step} cannot be read ({reason}); "
                           f"nothing was deleted: move that directory away to resume from an earlier step "
                           f"(kept: {others or 'none'})")

    def best_step(self) -> int | None:
        """The kept step ranked best by best_metric (keep_best_checkpoints > 0), else None."""
        return self._manager.best_step() if self._keep_best else None

    def reached_preemption(self, step: int) -> bool:
        """Multi-process: whether JAX's preemption sync manager has all processes stop at `step`."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for the save in flight: CheckpointWriteError if it failed, else its checksums are written."""
        try:
            self._finish_pending()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # e.g. a metadata write of a save that already failed
                if not self._failed:
                    raise self._write_failed(e) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()  # waits for async saves in flight, also when leaving with an error
        except CheckpointWriteError as e:
            if exc_type is None or issubclass(exc_type, Preempted):  # Preempted's message says the save worked
                raise
            logging.warning("%s", e)  # the error already on its way out stays the one reported


def _summary(error: Exception) -> str:
    """'OSError: first line of the message', for one-line reports."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def _files(step_dir: str) -> list[str]:
    """Every file of a step, relative to its directory, but the checksums themselves."""
    found = [os.path.relpath(os.path.join(root, name), step_dir)
             for root, _, names in os.walk(step_dir) for name in names]
    return sorted(p for p in found if not p.startswith(CHECKSUMS))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _NoOrbaxTracebacks(std_logging.Filter):
    """A failed async save makes Orbax log the same long traceback from several threads; jaxdist reports
    it as one line (CheckpointWriteError), so Orbax's log lines keep only the exception's first line."""

    def filter(self, record):
        if record.exc_info and record.exc_info[1] is not None and "/orbax/" in record.pathname:
            record.msg, record.args = f"{record.getMessage()} ({_summary(record.exc_info[1])})", ()
            record.exc_info = record.exc_text = None
        return True


logging.get_absl_logger().addFilter(_NoOrbaxTracebacks())


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
    fresh = traverse_util.flatten_dict({k: state[k] for k in ("params", "batch_stats")}, sep="/")
    with Checkpointer(directory, 1, read_only=True) as source:
        saved = source.array_shapes(step)
        taken = {p: a for p, a in fresh.items() if saved.get(p) == a.shape}
        if not any(p.startswith("params/") for p in taken):
            raise ConfigError(f"init_from: checkpoint {directory}/{step} shares no parameter (name and shape) with "
                              f"this model; its params are e.g. {sorted(p for p in saved if p.startswith('params/'))[:3]}")
        target = traverse_util.unflatten_dict({tuple(p.split("/")): jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
                                               for p, a in taken.items()})
        loaded = traverse_util.flatten_dict(source.restore_arrays(step, target), sep="/")
    kept = sorted(set(fresh) - set(taken))
    logging.info("init_from %s/%d: loaded %d arrays%s", directory, step, len(loaded),
                 f"; kept the fresh initialisation of {', '.join(f'{p} {fresh[p].shape}' for p in kept)}" if kept else "")
    merged = traverse_util.unflatten_dict({tuple(p.split("/")): a for p, a in {**fresh, **loaded}.items()})
    return {**state, **merged}


def check_weights(path: str) -> None:
    """init_from, checked before compiling and before the run's own checkpoint directory exists: the
    checkpoint is there and its metadata reads (load_weights then loads the arrays)."""
    directory, step = find_checkpoint(path)
    with Checkpointer(directory, 1, read_only=True) as source:
        source.array_shapes(step)
