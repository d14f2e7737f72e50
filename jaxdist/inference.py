"""Recognise image files with a trained run: one kept checkpoint, restored onto an inference mesh, gives
the top-k classes of each image, in batches sharded like the run's eval batches.

The workdir holds all it needs, so the training data need not be there: the config (saved in each
checkpoint), the class names (classes.json) and how an image becomes model input (run.json's "input":
decoded size and channels, mean and std). A file of any size is converted to the run's channels, resized
to its decoded size, then goes through the run's own eval transform (data/transforms.py: resize or
center crop to data.image_size, normalise, the rows view of a sequence model), so a file holding a test
image gets the prediction the eval step computes for that image.

Params and batch statistics load straight into the inference mesh's shardings, whatever mesh trained
them (the optimizer state is not read); a local-SGD checkpoint's copies are averaged, as its evaluation
does. A file that cannot be read does not stop the others: its row is masked out and the file is
reported with the reason.
"""
import copy
import dataclasses
import json
import math
import os
import threading

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from jaxdist import cli
from jaxdist.config import MESH_AXES, base_config
from jaxdist.data import pipeline
from jaxdist.data.folder import EXTENSIONS
from jaxdist.data.transforms import ImageTransform, resize
from jaxdist.errors import ConfigError
from jaxdist.parallel import mesh as mesh_lib
from jaxdist.parallel import rules as rules_lib
from jaxdist.parallel import sharding as sharding_lib
from jaxdist.parallel import spatial
from jaxdist.parallel import sync as sync_lib
from jaxdist.train import checkpoint
from jaxdist.train import state as state_lib

DEFAULT_BATCH = 256  # rounded up to a multiple of the devices and processes that split a batch
DEFAULT_TOP_K = 5  # or every class, with fewer


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run as predict reads it."""
    workdir: str
    step: int  # the checkpoint
    config: ml_collections.ConfigDict  # the run's, as saved with that checkpoint
    class_names: tuple[str, ...]
    input: dict  # run.json's "input" (data/sources.py image_input)


def open_run(workdir: str, step: int = 0) -> Run:
    """The run in `workdir` at kept checkpoint `step` (0: the latest); ConfigError names what is missing
    or cannot be used."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} does not exist; give the --workdir of a training run")
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    if not steps:
        raise ConfigError(f"no checkpoints in {directory}; train first: python -m jaxdist.main --config=... "
                          f"--workdir={workdir}")
    step = step or steps[-1]
    if step not in steps:
        raise ConfigError(f"--step={step} is not kept in {directory}; kept steps: {', '.join(map(str, steps))}")
    with checkpoint.Checkpointer(directory, 1, read_only=True) as ckpt:
        config = _run_config(ckpt.saved_config(step), f"{directory}/{step}")
    facts = _read_json(workdir, "run.json")
    if "input" not in facts:
        raise ConfigError(f"{workdir}/run.json does not say how images become model input (it was written before "
                          f"jaxdist.predict existed); rerun the run's training command once with the same --workdir")
    if facts["input"] is None:
        raise ConfigError(f"{workdir} trained on {config.data.name} sequences, not images: predict reads image files")
    class_names = tuple(_read_json(workdir, "classes.json"))
    if len(class_names) != config.model.num_classes:
        raise ConfigError(f"{workdir}/classes.json names {len(class_names)} classes but the checkpoint's model has "
                          f"{config.model.num_classes}; give the workdir of one run")
    return Run(workdir, step, config, class_names, facts["input"])


def _run_config(saved: dict, where: str) -> ml_collections.ConfigDict:
    """The saved config as this jaxdist's ConfigDict, checked as a training run's would be."""
    config = base_config()
    config.lock()  # a field this jaxdist does not know raises instead of being added
    try:
        config.update(saved)
        cli.validate(config)
    except (ConfigError, KeyError, AttributeError, TypeError) as e:
        reason = e.args[0] if e.args else type(e).__name__
        raise ConfigError(f"checkpoint {where} holds a config this jaxdist cannot run ({reason}); predict with "
                          f"the jaxdist version that trained it") from None
    return config


def _read_json(workdir: str, name: str):
    path = os.path.join(workdir, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path} ({type(e).__name__}: {e}); training writes it: give the --workdir "
                          f"of a training run") from None


def parse_mesh(text: str) -> dict[str, int]:
    """'data=4,model=2' -> every mesh axis's size (the others 1); '' -> all devices on data."""
    sizes = dict.fromkeys(MESH_AXES, 1)
    if not text:
        return {**sizes, "data": -1}
    for part in text.split(","):
        axis, _, size = (x.strip() for x in part.partition("="))
        if axis not in sizes or not size.lstrip("-").isdigit():
            raise ConfigError(f"--mesh={text!r}: each part must be AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}, "
                              f"e.g. --mesh=data=4,model=2 (one size may be -1: all devices left)")
        sizes[axis] = int(size)
    return sizes


def image_files(paths: list[str]) -> list[str]:
    """The image files `paths` name, in the order given; a folder gives its images at any depth, sorted."""
    if not paths:
        raise ConfigError("no images given: python -m jaxdist.predict --workdir=RUN PATH... (image files or folders)")
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                           if name.lower().endswith(EXTENSIONS))
            if not found:
                raise ConfigError(f"folder {path} has no {'/'.join(EXTENSIONS)} files")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ConfigError(f"{path} does not exist; give image files or folders of them")
    return files


class ImageReader:
    """Image file -> model input as the run's eval transform makes it, or None if the file cannot be read
    (the reason kept in `errors`, by path). Grain calls it from several threads."""

    def __init__(self, run: Run):
        facts = run.input
        if facts["channels"] not in (1, 3):
            raise ConfigError(f"{run.workdir} trained on {facts['channels']}-channel images; predict reads image "
                              f"files as grey (1 channel) or RGB (3)")
        self.mode, self.channels = ("L" if facts["channels"] == 1 else "RGB"), facts["channels"]
        self.size = (facts["height"], facts["width"])
        self.resized_by_transform = bool(run.config.data.image_size)  # else resized here, to the decoded size
        self.transform = ImageTransform(run.config.data, facts["mean"], facts["std"], train=False)
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def input_shape(self) -> tuple[int, ...]:
        return self.transform(np.zeros((*self.size, self.channels), np.uint8), None).shape

    def __call__(self, path: str) -> np.ndarray | None:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(self.mode))
        except Exception as e:  # PIL raises many types for a bad file; each means "cannot read this one"
            with self._lock:
                self.errors[path] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return None
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if not self.resized_by_transform:
            pixels = resize(pixels, *self.size)
        return self.transform(pixels, None)


@dataclasses.dataclass(frozen=True)
class _FileBatch:
    """Batch k of the file list, this process's rows of it: images, and a mask (0: padding or unreadable)."""
    files: tuple[str, ...]
    global_batch: int
    rows: slice
    read: ImageReader
    blank: np.ndarray  # the input of a row without an image

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        ids = np.arange(k * self.global_batch, (k + 1) * self.global_batch)[self.rows]
        images = [self.read(self.files[i]) if i < len(self.files) else None for i in ids]
        return {"images": np.stack([self.blank if x is None else x for x in images]),
                "mask": np.asarray([x is not None for x in images], np.float32)}


class Predictor:
    """The run's model on an inference mesh, its variables restored from the run's checkpoint, and a compiled
    step that gives each row's top-k probabilities and classes."""

    def __init__(self, run: Run, mesh_sizes: dict[str, int], batch_size: int = 0, top_k: int = 0):
        c = copy.deepcopy(run.config)
        c.mesh.update(mesh_sizes)
        c.data.worker_count = 0  # threads: the readers' errors stay in this process
        self.mesh = mesh_lib.build_mesh(c.mesh)
        shards = math.lcm(sharding_lib.batch_shards(c, self.mesh), jax.process_count())
        if batch_size % shards:
            raise ConfigError(f"--batch_size={batch_size} is not divisible by the {shards} devices and processes that "
                              f"split a batch on mesh {mesh_lib.describe(self.mesh)}; use a multiple of {shards}")
        self.batch_size = batch_size or -(-DEFAULT_BATCH // shards) * shards
        self.top_k = top_k or min(DEFAULT_TOP_K, len(run.class_names))
        if not 1 <= self.top_k <= len(run.class_names):
            raise ConfigError(f"--top_k={top_k} must be between 1 and {len(run.class_names)}, the run's classes")
        c.batch_size = c.eval_batch_size = self.batch_size
        c.optimizer.grad_accum_steps = 1
        rows = sharding_lib.batch_sharding(c, self.mesh)
        self.run, self.config, self.read = run, c, ImageReader(run)
        shape = self.read.input_shape()
        self.shardings = sharding_lib.BatchShardings(rows, spatial.image_sharding(c, self.mesh, shape, rows))
        model = state_lib.Model.create(c, shape, c.model.num_classes, self.mesh)
        sync = sync_lib.build(c, self.mesh)
        self.variables = _restore(run, c, model, sync, self.mesh)

        def predict(variables, batch):
            v = sync.model_variables(variables)
            logits, _ = model.apply(v["params"], v["batch_stats"], batch["images"], train=False)
            probabilities, classes = jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32)), self.top_k)
            return probabilities, classes, batch["mask"]

        batch = {"images": jax.ShapeDtypeStruct((self.batch_size, *shape), jnp.float32, sharding=self.shardings.images),
                 "mask": jax.ShapeDtypeStruct((self.batch_size,), jnp.float32, sharding=rows)}
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._step = jax.jit(predict, out_shardings=replicated).lower(self.variables, batch).compile()
        self._blank = np.zeros(shape, np.float32)

    def batches(self, files: list[str]):
        """Global batches of `files` in order, the last one padded (extra rows masked); each process reads
        its own rows, in the run's data.num_threads threads."""
        rows = pipeline.local_rows(self.shardings.rows, self.batch_size)
        local = grain.MapDataset.range(-(-len(files) // self.batch_size)).map(
            _FileBatch(tuple(files), self.batch_size, rows, self.read, self._blank))
        return pipeline.global_batches(local, self.config.data, self.batch_size, self.shardings)

    def __call__(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities [B, k], class indices [B, k], mask [B]) of one global batch, on every process."""
        return tuple(np.asarray(x) for x in self._step(self.variables, batch))


def _restore(run: Run, config, model, sync, mesh) -> dict:
    """Params and batch statistics of the run's checkpoint, placed on `mesh` by the run's sharding rules.
    Shapes come from the checkpoint: a local-SGD state holds one copy per training replica."""
    directory = os.path.join(run.workdir, "checkpoints")
    names = sync.names(model.logical_names())
    model_shapes = {"params": nnx.to_pure_dict(model.abstract_params),
                    "batch_stats": nnx.to_pure_dict(model.abstract_batch_stats)}
    with checkpoint.Checkpointer(directory, 1, read_only=True) as ckpt:
        saved = ckpt.array_shapes(run.step)

        def target(path, dims, leaf):
            key = "/".join(str(getattr(p, "key", p)) for p in path)
            shape = saved.get(key)
            stacked = sync.mode == "local_sgd"
            if shape is None or tuple(shape[1:] if stacked else shape) != leaf.shape:
                raise ConfigError(f"checkpoint {directory}/{run.step} does not fit the model its config builds: "
                                  f"{key} is {shape} there, {leaf.shape} in the model")
            spec = rules_lib.logical_to_spec(dims, shape, config.sharding_rules, mesh)
            return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype, sharding=NamedSharding(mesh, spec))

        abstract = jax.tree_util.tree_map_with_path(target, {k: names[k] for k in model_shapes}, model_shapes,
                                                    is_leaf=lambda x: isinstance(x, tuple))
        return ckpt.restore_arrays(run.step, abstract)
