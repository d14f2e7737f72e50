"""The config contract: one ConfigDict with every knob, and checks that run before any device work.

Experiment files in `configs/` start from `base_config()` and change only what differs. Other
tooling (bench, tests, deploy) relies on these names, so add fields here rather than ad hoc.

A leaf: it imports no other part of jaxdist, and every part imports it. `validate` checks what needs
no other part; each part checks the fields it gives meaning to (model names in models/registry.py,
augmentations and views in data/transforms.py, strategies in parallel/), and `jaxdist.cli.validate`
runs them all before any device work.
"""
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
    return c


def check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def validate(c: ml_collections.ConfigDict) -> None:
    """The fields no single part owns; needs no devices (device-dependent checks live in parallel/)."""
    check_choice("optimizer.name", c.optimizer.name, OPTIMIZERS)
    check_choice("schedule.name", c.schedule.name, SCHEDULES)
    check_choice("dtype", c.dtype, DTYPES)
    check_choice("nan_policy", c.nan_policy, NAN_POLICIES)
    check_choice("best_metric", c.best_metric, BEST_METRICS)
    unknown_axes = set(c.mesh.keys()) - set(MESH_AXES)
    if unknown_axes:
        raise ConfigError(f"unknown mesh axis {sorted(unknown_axes)[0]!r}; valid: {', '.join(MESH_AXES)}")
    for logical, axes in c.sharding_rules:
        for axis in (axes,) if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(
                    f"sharding rule {logical!r} -> {axis!r} names an unknown mesh axis; valid: {', '.join(MESH_AXES)}")
    for name in ("batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every"):
        if not isinstance(c[name], int) or c[name] <= 0:
            raise ConfigError(f"{name}={c[name]!r} must be a positive integer")
    if c.keep_checkpoints < 1 or c.keep_best_checkpoints < 0 or c.checkpoint_every_seconds < 0:
        raise ConfigError(f"keep_checkpoints={c.keep_checkpoints} must be >= 1, keep_best_checkpoints="
                          f"{c.keep_best_checkpoints} and checkpoint_every_seconds={c.checkpoint_every_seconds} >= 0")
    if c.optimizer.grad_accum_steps < 1:
        raise ConfigError(f"optimizer.grad_accum_steps={c.optimizer.grad_accum_steps} must be >= 1")
    if c.batch_size % c.optimizer.grad_accum_steps:
        raise ConfigError(f"batch_size={c.batch_size} is not divisible by "
                          f"optimizer.grad_accum_steps={c.optimizer.grad_accum_steps}")
    if c.report.peak_flops_per_s < 0:
        raise ConfigError(f"report.peak_flops_per_s={c.report.peak_flops_per_s} must be >= 0 (0 = from the chip table)")
    if c.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr={c.optimizer.lr} must be > 0")
    if not 0 <= c.schedule.warmup_steps < c.total_steps:
        raise ConfigError(f"schedule.warmup_steps={c.schedule.warmup_steps} must be in [0, total_steps={c.total_steps})")


def eval_batch_size(c: ml_collections.ConfigDict) -> int:
    return c.eval_batch_size or c.batch_size
