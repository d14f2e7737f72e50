"""The config contract: one ConfigDict with every knob, and checks that run before any device work.

Experiment files in `configs/` start from `base_config()` and change only what differs. Other
tooling (bench, tests, deploy) relies on these names, so add fields here rather than ad hoc.

A leaf: it imports no other part of jaxdist, and every part imports it. `validate` checks what needs
no other part; each part checks the fields it gives meaning to (model names in models/registry.py,
augmentations and views in data/transforms.py, strategies in parallel/), and `jaxdist.cli.validate`
runs them all before any device work.
"""
import math
import re

import ml_collections

from jaxdist.errors import ConfigError

MESH_AXES = ("stage", "data", "fsdp", "spatial", "model")
# Logical axis name -> mesh axes; parallel/rules.py explains each name and how the rules resolve.
DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("height", "spatial"),
    ("conv_in", "fsdp"),
    ("conv_out", ("model", "fsdp")),
    ("embed", "fsdp"),
    ("hidden", ("model", "fsdp")),
    ("classes", None),
    ("layers", "stage"),
    ("replicas", "data"),
)
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw", "lars", "lamb")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = ("float32", "bfloat16")
NAN_POLICIES = ("stop", "skip", "off")
BEST_METRICS = ("accuracy", "loss")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Simulated CPU devices (jax_num_cpu_devices); 0 keeps JAX's default. Ignored by GPU/TPU backends.
    c.cpu_devices = 0
    # Mesh axis sizes, outermost to innermost; -1 takes all devices left.
    c.mesh = ml_collections.ConfigDict(dict(stage=1, data=-1, fsdp=1, spatial=1, model=1))
    # Logical axis name -> mesh axes. One rule set serves DP, FSDP, TP and hybrids: an axis of size 1
    # splits nothing, so the mesh sizes choose the strategy.
    c.sharding_rules = DEFAULT_RULES

    c.model = ml_collections.ConfigDict(dict(
        name="cnn",
        num_classes=10,
        # Recurrent models (lstm, gru) only; docs/rnn.md.
        hidden_size=128,  # units per direction of each layer
        num_layers=1,  # stacked layers
        bidirectional=False,
        pool="last",  # head input: last | mean (over the valid steps) of the top layer's outputs
        fused_gates=True,  # lstm: nnx.OptimizedLSTMCell (one kernel for all gates) | False: nnx.LSTMCell
        unroll=1,  # time steps per iteration of the scan (nnx.RNN's unroll)
        # convmixer only: width, number of blocks, patch size of the stem, depthwise kernel size.
        dim=256,
        depth=8,
        patch_size=2,
        kernel_size=5,
        # resnets only: channels of the first stage, doubled by each later one; 0: the paper's (16 for
        # resnet8/20/56, 64 for resnet18/50).
        width=0,
        # Rows that share BatchNorm statistics (parallel/bn_groups.py): global (mesh-invariant) | replica
        # (each batch shard's rows, as PyTorch DDP) | a group size as a string, e.g. '32' (mesh-invariant).
        bn_group="global",
    ))
    c.data = ml_collections.ConfigDict(dict(
        # digits | synthetic | folder | ucr (time series) | any tfds dataset with image and label features (cifar10, mnist, ...)
        name="digits",
        tfds_data_dir="",  # '' = tfds' default (~/tensorflow_datasets or $TFDS_DATA_DIR)
        # folder: DIR/<class>/<image>.{jpg,png}. cifar10, cifar100, mnist, fashion_mnist: their raw download as
        # torchvision or Keras keep it, read directly (docs/data.md); '' = the prepared tfds dataset.
        path="",
        val_path="",  # folder: a separate test folder; '' = hold out val_fraction of each class
        val_fraction=0.1,
        split_seed=0,  # folder: which files the held-out split takes (independent of `seed`)
        strict=False,  # folder: an unreadable image stops the run instead of being skipped
        image_size=0,  # 0 = the dataset's own size; otherwise resize (or crop) to image_size x image_size
        augment="none",  # none | flip | crop (pad + random crop) | crop_flip (CIFAR) | inception_crop (ImageNet)
        crop_padding=4,
        view="image",  # image (H, W, C) | rows (H time steps of W*C features, for RNNs)
        ucr_name="JapaneseVowels",  # data.name='ucr': a UCR/UEA set bundled with sktime (pip install '.[ucr]')
        num_threads=4,  # threads building batches (read, decode, augment)
        worker_count=0,  # >0: build batches in that many worker processes instead
        prefetch=2,  # batches kept ready on the devices ahead of the step
        synthetic_shape=(32, 32, 3),
        synthetic_examples=1024,
    ))

    # mesh.stage > 1: the batch streams through the stages in this many microbatches (GPipe); more
    # microbatches shrink the idle bubble, (stage - 1) / (microbatches + stage - 1). docs/parallelism.md.
    c.pipeline = ml_collections.ConfigDict(dict(microbatches=4))

    c.batch_size = 128  # global, over all processes and devices
    c.eval_batch_size = 0  # 0 = batch_size
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.checkpoint_every_seconds = 0.0  # also save when this long has passed since the last save; 0 = off
    c.keep_checkpoints = 3  # the latest N
    c.keep_best_checkpoints = 0  # plus the best N by best_metric, among checkpoints taken at eval steps
    c.best_metric = "accuracy"  # accuracy (higher is better) | loss (lower is better)
    # A step whose loss or gradient is not finite is never applied. 'stop': end the run (exit code 3)
    # naming the step, the latest checkpoint staying the last good one; 'skip': count it and go on;
    # 'off': no check.
    c.nan_policy = "stop"
    c.init_from = ""  # a workdir or checkpoint to take params and batch statistics from (fine-tuning)
    c.eval_step = 0  # --mode=eval: which kept step to evaluate; 0 = the latest
    # Log the global gradient norm: the same norm the non-finite guard reads, so the two together cost
    # no measurable time (docs/benchmarks.md, "What the default path costs").
    c.log_grad_norm = True

    c.optimizer = ml_collections.ConfigDict(dict(
        name="momentum",
        lr=0.1,
        momentum=0.9,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=5e-4,  # not applied to biases and norm scales
        clip_norm=0.0,  # global-norm clipping; 0 = off
        grad_accum_steps=1,  # micro-batches per update, summed inside one jitted step
        lr_base_batch=0,  # >0: linear scaling, lr * batch_size / lr_base_batch
    ))
    c.schedule = ml_collections.ConfigDict(dict(
        name="cosine",
        warmup_steps=0,
        decay_steps_fraction=(0.5, 0.75),  # 'step': where to decay, as fractions of total_steps
        decay_factor=0.1,
        final_lr_fraction=0.0,  # 'cosine': lr at the last step, as a fraction of the peak
    ))
    c.dtype = "float32"  # compute dtype; params and optimizer state stay float32
    # The parallel report (workdir/parallel_report.json, jaxdist/parallel/report.py): the peak dense FLOP/s
    # of one device, for MFU. 0 = from the chip table (parallel/chips.py) by device kind; none for CPU.
    c.report = ml_collections.ConfigDict(dict(peak_flops_per_s=0.0))
    # How data replicas combine their work (parallel/sync.py; docs/parallelism.md, "Synchronization modes").
    c.sync = ml_collections.ConfigDict(dict(
        mode="allreduce",  # allreduce (hard sync) | local_sgd (soft sync) | stale (emulated async SGD)
        every=1,  # local_sgd: steps between parameter averages (H); optimizer state stays per replica
        staleness=0,  # stale: steps by which each gradient is applied late (tau); 0 = allreduce
        grad_dtype="float32",  # allreduce, stale: dtype of the gradient all-reduce, float32 | bfloat16
    ))
    # The step watchdog (train/watchdog.py): no progress for this long ends the run with its stacks, exit 7.
    c.watchdog = ml_collections.ConfigDict(dict(
        timeout_s=0.0,  # 0 = factor x the median of the recent steps' times, never below floor_s
        floor_s=300.0,
        factor=20.0,
    ))
    return c


def check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


# A URL such as gs://bucket/run: open() and os.makedirs would take it for a local relative path "gs:/...".
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_local_path(what: str, value: str) -> None:
    """Refuses a URL where jaxdist reads or writes through the local filesystem (the workdir, its lock and
    files; data and checkpoint paths). Without this, --workdir=gs://bucket/run wrote its metrics into a local
    directory named "gs:" and crashed later in the TensorBoard writer."""
    if isinstance(value, str) and _URL.match(value):
        raise ConfigError(f"{what}={value} is a URL; jaxdist reads and writes local paths only: mount the bucket "
                          f"on every host (gcsfuse, or any shared filesystem) and give the mount point, "
                          f"e.g. {what}=/mnt/BUCKET/{value.split('://', 1)[1].partition('/')[2] or 'runs/NAME'}")


def _int(test, valid):
    return int, test, valid


def _number(test, valid):
    return float, test, valid


_POSITIVE_INT = _int(lambda v: v >= 1, "an integer >= 1")
_COUNT = _int(lambda v: v >= 0, "an integer >= 0")
_POSITIVE = _number(lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = _number(lambda v: v >= 0, "a number >= 0")
_DECAY_RATE = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
# Every numeric field and the values that mean something. Types come from base_config (`check_types`).
NUMERIC_FIELDS = {
    "seed": _COUNT, "cpu_devices": _COUNT, "batch_size": _POSITIVE_INT, "eval_batch_size": _COUNT,
    "total_steps": _POSITIVE_INT, "log_every": _POSITIVE_INT, "eval_every": _POSITIVE_INT,
    "checkpoint_every": _POSITIVE_INT, "checkpoint_every_seconds": _NON_NEGATIVE, "keep_checkpoints": _POSITIVE_INT,
    "keep_best_checkpoints": _COUNT, "eval_step": _COUNT,
    "model.num_classes": _int(lambda v: v >= 2, "an integer >= 2 (a classifier needs two classes)"),
    "model.hidden_size": _POSITIVE_INT, "model.num_layers": _POSITIVE_INT, "model.unroll": _POSITIVE_INT,
    "model.dim": _POSITIVE_INT, "model.depth": _POSITIVE_INT, "model.patch_size": _POSITIVE_INT,
    "model.kernel_size": _POSITIVE_INT, "model.width": _COUNT,
    "data.val_fraction": _number(lambda v: 0 < v < 1, "a number in (0, 1)"), "data.split_seed": _COUNT,
    "data.image_size": _COUNT, "data.crop_padding": _COUNT, "data.num_threads": _POSITIVE_INT,
    "data.worker_count": _COUNT, "data.prefetch": _COUNT, "data.synthetic_examples": _POSITIVE_INT,
    "pipeline.microbatches": _POSITIVE_INT,
    "optimizer.lr": _POSITIVE, "optimizer.momentum": _DECAY_RATE, "optimizer.b1": _DECAY_RATE,
    "optimizer.b2": _DECAY_RATE, "optimizer.eps": _POSITIVE, "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.clip_norm": _NON_NEGATIVE, "optimizer.grad_accum_steps": _POSITIVE_INT,
    "optimizer.lr_base_batch": _COUNT,
    "schedule.warmup_steps": _COUNT, "schedule.decay_factor": _POSITIVE,
    "schedule.final_lr_fraction": _number(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "report.peak_flops_per_s": _NON_NEGATIVE, "sync.every": _POSITIVE_INT, "sync.staleness": _COUNT,
    "watchdog.timeout_s": _NON_NEGATIVE, "watchdog.floor_s": _POSITIVE,
    "watchdog.factor": _number(lambda v: v >= 1, "a number >= 1 (times the median step)"),
}


def _leaves(c, prefix: str = ""):
    for key, value in c.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _kind(value) -> str:
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return "sequence" if isinstance(value, (tuple, list)) else type(value).__name__


def check_types(c: ml_collections.ConfigDict) -> None:
    """The config has exactly base_config's fields, each of the same kind: a config file that builds its
    own ConfigDict, drops a section or adds a misspelt field fails here, not deep in the run. (Assigning
    another type to a base_config field already fails inside get_config: ml_collections checks it.)"""
    base, given = dict(_leaves(base_config())), dict(_leaves(c))
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r} set by the config file; the fields are those of "
                          "jaxdist.config.base_config()")
    for name, default in base.items():
        if name not in given:
            raise ConfigError(f"the config has no field {name!r}; start the config file from "
                              "jaxdist.config.base_config()")
        value, kind = given[name], _kind(default)
        wanted = NUMERIC_FIELDS.get(name, (None,))[0]
        if _kind(value) != kind or (wanted is int and not isinstance(value, int)):
            what = {"number": "an integer" if wanted is int else "a number", "sequence": "a tuple",
                    "bool": "true or false", "str": "a string"}.get(kind, kind)
            raise ConfigError(f"{name}={value!r} is a {type(value).__name__}; it must be {what}")


def check_values(c: ml_collections.ConfigDict) -> None:
    """Numbers that type-check but mean nothing: NaN or inf anywhere, and each field's range."""
    for name, value in _leaves(c):
        numbers = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ConfigError(f"{name}={value!r} is not a finite number")
        if name in NUMERIC_FIELDS:
            _, test, valid = NUMERIC_FIELDS[name]
            if not test(value):
                raise ConfigError(f"{name}={value!r} must be {valid}")
    for axis, size in c.mesh.items():
        if not isinstance(size, int) or isinstance(size, bool) or not (size >= 1 or size == -1):
            raise ConfigError(f"mesh.{axis}={size!r} must be a positive integer, or -1 for all devices left")
    if not all(0 < f < 1 for f in c.schedule.decay_steps_fraction):
        raise ConfigError(f"schedule.decay_steps_fraction={tuple(c.schedule.decay_steps_fraction)} must hold "
                          "fractions of total_steps in (0, 1)")
    shape = tuple(c.data.synthetic_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ConfigError(f"data.synthetic_shape={shape} must be (height, width, channels) of positive integers")


def check_rules(rules) -> None:
    """sharding_rules: (logical name, mesh axis | tuple of mesh axes | None) pairs."""
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"sharding rule {rule!r} must be a pair (logical axis name, mesh axes), "
                              "e.g. ('batch', ('data', 'fsdp'))")
        logical, axes = rule
        for axis in (axes,) if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(
                    f"sharding rule {logical!r} -> {axis!r} names an unknown mesh axis; valid: {', '.join(MESH_AXES)}")


def validate(c: ml_collections.ConfigDict) -> None:
    """The fields no single part owns; needs no devices (device-dependent checks live in parallel/)."""
    check_types(c)
    check_values(c)
    check_choice("optimizer.name", c.optimizer.name, OPTIMIZERS)
    check_choice("schedule.name", c.schedule.name, SCHEDULES)
    check_choice("dtype", c.dtype, DTYPES)
    check_choice("nan_policy", c.nan_policy, NAN_POLICIES)
    check_choice("best_metric", c.best_metric, BEST_METRICS)
    check_rules(c.sharding_rules)
    for what, value in (("data.path", c.data.path), ("data.val_path", c.data.val_path), ("init_from", c.init_from)):
        check_local_path(what, value)
    if c.batch_size % c.optimizer.grad_accum_steps:
        raise ConfigError(f"batch_size={c.batch_size} is not divisible by "
                          f"optimizer.grad_accum_steps={c.optimizer.grad_accum_steps}")


def warmup_steps(c: ml_collections.ConfigDict) -> int:
    """A shortened run (--config.total_steps=10 on a config with 50 warmup steps) just runs, its warmup
    clipped to the run (the loop logs it)."""
    return min(c.schedule.warmup_steps, c.total_steps)


def eval_batch_size(c: ml_collections.ConfigDict) -> int:
    return c.eval_batch_size or c.batch_size
