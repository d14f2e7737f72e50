"""config.validate, table-driven and in-process: every refusal with its exact message, and the values at the
edges of each range that must still be accepted (so that an off-by-one in a check fails here).

tests/test_bad_input.py runs bad command lines through the CLI; this file checks the checks themselves.
"""
import math

import ml_collections
import pytest

from jaxdist import config as config_lib
from jaxdist.config import ConfigError, base_config, validate

DROP = object()  # a change that removes the field


def _config(changes):
    """base_config with `changes` ({'dotted.name': value | DROP}), built as a config file could build it,
    so that values of another type than the default's get through (ml_collections would refuse them)."""
    tree = base_config().to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        if value is DROP:
            del node[leaf]
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(tree)


def _refused(changes):
    with pytest.raises(ConfigError) as e:
        validate(_config(changes))
    return str(e.value)


# (changes, the whole error message)
REFUSED = [
    # check_types: unknown and missing fields
    ({"model.widht": 3}, "unknown config field 'model.widht' set by the config file; the fields are those of "
                         "jaxdist.config.base_config()"),
    ({"zz": 1, "aa": 1}, "unknown config field 'aa' set by the config file; the fields are those of "
                         "jaxdist.config.base_config()"),
    ({"data.prefetch": DROP}, "the config has no field 'data.prefetch'; start the config file from "
                              "jaxdist.config.base_config()"),
    ({"report": DROP}, "the config has no field 'report.peak_flops_per_s'; start the config file from "
                       "jaxdist.config.base_config()"),
    # check_types: kinds
    ({"batch_size": 16.0}, "batch_size=16.0 is a float; it must be an integer"),
    ({"batch_size": True}, "batch_size=True is a bool; it must be an integer"),
    ({"cpu_devices": 0.0}, "cpu_devices=0.0 is a float; it must be an integer"),
    ({"model.num_classes": "10"}, "model.num_classes='10' is a str; it must be an integer"),
    ({"optimizer.lr": "0.1"}, "optimizer.lr='0.1' is a str; it must be a number"),
    ({"optimizer.lr": None}, "optimizer.lr=None is a NoneType; it must be a number"),
    ({"optimizer.lr": False}, "optimizer.lr=False is a bool; it must be a number"),
    ({"mesh.data": "8"}, "mesh.data='8' is a str; it must be a number"),
    ({"model.bidirectional": 1}, "model.bidirectional=1 is a int; it must be true or false"),
    ({"log_grad_norm": None}, "log_grad_norm=None is a NoneType; it must be true or false"),
    ({"model.name": 3}, "model.name=3 is a int; it must be a string"),
    ({"model.name": None}, "model.name=None is a NoneType; it must be a string"),
    ({"data.synthetic_shape": "32"}, "data.synthetic_shape='32' is a str; it must be a tuple"),
    ({"sharding_rules": None}, "sharding_rules=None is a NoneType; it must be a tuple"),
    # check_values: not finite
    ({"optimizer.lr": math.nan}, "optimizer.lr=nan is not a finite number"),
    ({"checkpoint_every_seconds": -math.inf}, "checkpoint_every_seconds=-inf is not a finite number"),
    ({"report.peak_flops_per_s": math.inf}, "report.peak_flops_per_s=inf is not a finite number"),
    ({"schedule.decay_steps_fraction": (0.5, math.inf)},
     "schedule.decay_steps_fraction=(0.5, inf) is not a finite number"),
    # check_values: mesh sizes
    ({"mesh.data": 0}, "mesh.data=0 must be a positive integer, or -1 for all devices left"),
    ({"mesh.model": -2}, "mesh.model=-2 must be a positive integer, or -1 for all devices left"),
    ({"mesh.fsdp": 2.0}, "mesh.fsdp=2.0 must be a positive integer, or -1 for all devices left"),
    ({"mesh.stage": -1.0}, "mesh.stage=-1.0 must be a positive integer, or -1 for all devices left"),
    # check_values: decay fractions
    ({"schedule.decay_steps_fraction": (0.5, 1.0)},
     "schedule.decay_steps_fraction=(0.5, 1.0) must hold fractions of total_steps in (0, 1)"),
    ({"schedule.decay_steps_fraction": (0.0,)},
     "schedule.decay_steps_fraction=(0.0,) must hold fractions of total_steps in (0, 1)"),
    ({"schedule.decay_steps_fraction": [0.5, -0.5]},
     "schedule.decay_steps_fraction=(0.5, -0.5) must hold fractions of total_steps in (0, 1)"),
    # check_values: synthetic_shape
    ({"data.synthetic_shape": (32, 32)},
     "data.synthetic_shape=(32, 32) must be (height, width, channels) of positive integers"),
    ({"data.synthetic_shape": (32, 32, 3, 1)},
     "data.synthetic_shape=(32, 32, 3, 1) must be (height, width, channels) of positive integers"),
    ({"data.synthetic_shape": (32, 0, 3)},
     "data.synthetic_shape=(32, 0, 3) must be (height, width, channels) of positive integers"),
    ({"data.synthetic_shape": (32, 32.0, 3)},
     "data.synthetic_shape=(32, 32.0, 3) must be (height, width, channels) of positive integers"),
    # check_choice
    ({"optimizer.name": "adam"}, "unknown optimizer.name 'adam'; valid: sgd, momentum, nesterov, adamw, lars, lamb"),
    ({"schedule.name": "linear"}, "unknown schedule.name 'linear'; valid: constant, cosine, step"),
    ({"dtype": "float16"}, "unknown dtype 'float16'; valid: float32, bfloat16"),
    ({"nan_policy": "ignore"}, "unknown nan_policy 'ignore'; valid: stop, skip, off"),
    ({"best_metric": "acc"}, "unknown best_metric 'acc'; valid: accuracy, loss"),
    # check_rules
    ({"sharding_rules": (("batch",),)},
     "sharding rule ('batch',) must be a pair (logical axis name, mesh axes), e.g. ('batch', ('data', 'fsdp'))"),
    ({"sharding_rules": (("batch", "data", "fsdp"),)},
     "sharding rule ('batch', 'data', 'fsdp') must be a pair (logical axis name, mesh axes), "
     "e.g. ('batch', ('data', 'fsdp'))"),
    ({"sharding_rules": ((1, "data"),)},
     "sharding rule (1, 'data') must be a pair (logical axis name, mesh axes), e.g. ('batch', ('data', 'fsdp'))"),
    ({"sharding_rules": ("batch",)},
     "sharding rule 'batch' must be a pair (logical axis name, mesh axes), e.g. ('batch', ('data', 'fsdp'))"),
    ({"sharding_rules": (("batch", "dta"),)},
     "sharding rule 'batch' -> 'dta' names an unknown mesh axis; valid: stage, data, fsdp, spatial, model"),
    ({"sharding_rules": (("batch", None), ("embed", ("data", "tensor")))},
     "sharding rule 'embed' -> 'tensor' names an unknown mesh axis; valid: stage, data, fsdp, spatial, model"),
    # batch_size vs grad_accum_steps
    ({"batch_size": 16, "optimizer.grad_accum_steps": 3},
     "batch_size=16 is not divisible by optimizer.grad_accum_steps=3"),
    ({"batch_size": 2, "optimizer.grad_accum_steps": 4},
     "batch_size=2 is not divisible by optimizer.grad_accum_steps=4"),
    # local paths: a URL is refused, whatever its scheme
    ({"data.path": "gs://bucket/cifar"},
     "data.path=gs://bucket/cifar is a URL; jaxdist reads and writes local paths only: mount the bucket on every host "
     "(gcsfuse, or any shared filesystem) and give the mount point, e.g. data.path=/mnt/BUCKET/cifar"),
    ({"data.val_path": "s3://bucket/a/val"},
     "data.val_path=s3://bucket/a/val is a URL; jaxdist reads and writes local paths only: mount the bucket on every "
     "host (gcsfuse, or any shared filesystem) and give the mount point, e.g. data.val_path=/mnt/BUCKET/a/val"),
    ({"init_from": "file:///runs/a"},
     "init_from=file:///runs/a is a URL; jaxdist reads and writes local paths only: mount the bucket on every host "
     "(gcsfuse, or any shared filesystem) and give the mount point, e.g. init_from=/mnt/BUCKET/runs/a"),
    ({"init_from": "gs://bucket"},
     "init_from=gs://bucket is a URL; jaxdist reads and writes local paths only: mount the bucket on every host "
     "(gcsfuse, or any shared filesystem) and give the mount point, e.g. init_from=/mnt/BUCKET/runs/NAME"),
    # the order of the checks: types, then values, then names
    ({"batch_size": 0, "optimizer.name": "adam", "seed": 1.5}, "seed=1.5 is a float; it must be an integer"),
    ({"batch_size": 0, "optimizer.name": "adam"}, "batch_size=0 must be an integer >= 1"),
    ({"optimizer.name": "adam", "schedule.name": "linear", "dtype": "x", "nan_policy": "x", "best_metric": "x"},
     "unknown optimizer.name 'adam'; valid: sgd, momentum, nesterov, adamw, lars, lamb"),
    ({"schedule.name": "linear", "dtype": "x", "nan_policy": "x", "best_metric": "x"},
     "unknown schedule.name 'linear'; valid: constant, cosine, step"),
    ({"dtype": "x", "nan_policy": "x", "best_metric": "x"}, "unknown dtype 'x'; valid: float32, bfloat16"),
    ({"nan_policy": "x", "best_metric": "x", "sharding_rules": (("b", "x"),)},
     "unknown nan_policy 'x'; valid: stop, skip, off"),
    ({"best_metric": "x", "sharding_rules": (("b", "x"),)}, "unknown best_metric 'x'; valid: accuracy, loss"),
    ({"sharding_rules": (("b", "x"),), "optimizer.grad_accum_steps": 3},
     "sharding rule 'b' -> 'x' names an unknown mesh axis; valid: stage, data, fsdp, spatial, model"),
]

POSITIVE_INT, COUNT = "an integer >= 1", "an integer >= 0"
POSITIVE, NON_NEGATIVE, DECAY_RATE = "a number > 0", "a number >= 0", "a number in [0, 1)"
# Every numeric field: (name, values accepted at the edges of its range, values refused, what it must be).
RANGES = [
    ("seed", [0], [-1], COUNT), ("cpu_devices", [0], [-1], COUNT), ("batch_size", [1], [0, -1], POSITIVE_INT),
    ("eval_batch_size", [0], [-1], COUNT), ("total_steps", [1], [0], POSITIVE_INT),
    ("log_every", [1], [0], POSITIVE_INT), ("eval_every", [1], [0], POSITIVE_INT),
    ("checkpoint_every", [1], [0], POSITIVE_INT), ("checkpoint_every_seconds", [0.0, 1e-9], [-1e-9], NON_NEGATIVE),
    ("keep_checkpoints", [1], [0], POSITIVE_INT), ("keep_best_checkpoints", [0], [-1], COUNT),
    ("eval_step", [0], [-1], COUNT),
    ("model.num_classes", [2], [1, 0], "an integer >= 2 (a classifier needs two classes)"),
    ("model.hidden_size", [1], [0], POSITIVE_INT), ("model.num_layers", [1], [0], POSITIVE_INT),
    ("model.unroll", [1], [0], POSITIVE_INT), ("model.dim", [1], [0], POSITIVE_INT), ("model.width", [0, 4], [-1], COUNT),
    ("model.depth", [1], [0], POSITIVE_INT), ("model.patch_size", [1], [0], POSITIVE_INT),
    ("model.kernel_size", [1], [0], POSITIVE_INT),
    ("data.val_fraction", [1e-9, 0.5, 1 - 1e-9], [0.0, 1.0, -0.1], "a number in (0, 1)"),
    ("data.split_seed", [0], [-1], COUNT), ("data.image_size", [0], [-1], COUNT),
    ("data.crop_padding", [0], [-1], COUNT), ("data.num_threads", [1], [0], POSITIVE_INT),
    ("data.worker_count", [0], [-1], COUNT), ("data.prefetch", [0], [-1], COUNT),
    ("data.synthetic_examples", [1], [0], POSITIVE_INT), ("pipeline.microbatches", [1], [0], POSITIVE_INT),
    ("optimizer.lr", [1e-12, 1], [0.0, -0.1], POSITIVE),
    ("optimizer.momentum", [0.0, 0.999999], [1.0, -1e-9], DECAY_RATE),
    ("optimizer.b1", [0.0, 0.999999], [1.0, -1e-9], DECAY_RATE),
    ("optimizer.b2", [0.0, 0.999999], [1.0, -1e-9], DECAY_RATE),
    ("optimizer.eps", [1e-30], [0.0], POSITIVE), ("optimizer.weight_decay", [0.0], [-1e-9], NON_NEGATIVE),
    ("optimizer.clip_norm", [0.0], [-1e-9], NON_NEGATIVE), ("optimizer.grad_accum_steps", [1], [0], POSITIVE_INT),
    ("optimizer.lr_base_batch", [0], [-1], COUNT), ("schedule.warmup_steps", [0], [-1], COUNT),
    ("schedule.decay_factor", [1e-9], [0.0], POSITIVE),
    ("schedule.final_lr_fraction", [0.0, 1.0], [-1e-9, 1.000001], "a number in [0, 1]"),
    ("report.peak_flops_per_s", [0.0], [-1.0], NON_NEGATIVE), ("sync.every", [1], [0], POSITIVE_INT),
    ("sync.staleness", [0], [-1], COUNT), ("watchdog.timeout_s", [0.0, 1e-9], [-1e-9], NON_NEGATIVE),
    ("watchdog.floor_s", [1e-9], [0.0], POSITIVE),
    ("watchdog.factor", [1.0], [0.999999, 0.0], "a number >= 1 (times the median step)"),
]


@pytest.mark.parametrize("changes, message", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_refused_with_its_message(changes, message):
    assert _refused(changes) == message


@pytest.mark.parametrize("path", ["runs/gs:x", "/mnt/bucket/runs/a", "gs:/bucket/run", "C:/data", "a://"[1:], ""])
def test_local_paths_that_look_a_little_like_urls_pass(path):
    """Only SCHEME:// is a URL: a colon in a name, a single slash, or no scheme letters before :// are paths."""
    config_lib.check_local_path("--workdir", path)


def test_every_numeric_field_has_a_range_row():
    assert sorted(name for name, *_ in RANGES) == sorted(config_lib.NUMERIC_FIELDS)


@pytest.mark.parametrize("name, accepted, refused, valid", RANGES, ids=[r[0] for r in RANGES])
def test_numeric_ranges_at_their_edges(name, accepted, refused, valid):
    for value in accepted:
        validate(_config({name: value}))
    for value in refused:
        assert _refused({name: value}) == f"{name}={value!r} must be {valid}"


ACCEPTED = [
    {},
    {"optimizer.lr": 1},  # an int where a float is wanted
    {"checkpoint_every_seconds": 5},
    {"data.synthetic_shape": [1, 1, 1]},  # a list where a tuple is wanted
    {"data.synthetic_shape": (1, 2, 3)},
    {"schedule.decay_steps_fraction": ()}, {"schedule.decay_steps_fraction": (0.001, 0.999)},
    {"schedule.decay_steps_fraction": [0.3]},
    {"mesh.data": 1}, {"mesh.data": 8}, {"mesh.data": -1, "mesh.model": -1},  # two -1: parallel/mesh.py's to refuse
    {"sharding_rules": ()}, {"sharding_rules": [["batch", "data"]]}, {"sharding_rules": (("batch", None),)},
    {"sharding_rules": (("batch", ("data", None)),)}, {"sharding_rules": (("x", []),)},
    {"sharding_rules": tuple((axis, axis) for axis in ("stage", "data", "fsdp", "spatial", "model"))},
    {"sharding_rules": (("batch", ("stage", "data", "fsdp", "spatial", "model")),)},
    {"batch_size": 16, "optimizer.grad_accum_steps": 4}, {"batch_size": 16, "optimizer.grad_accum_steps": 16},
    {"batch_size": 1, "optimizer.grad_accum_steps": 1},
    *[{"optimizer.name": name} for name in ("sgd", "momentum", "nesterov", "adamw", "lars", "lamb")],
    *[{"schedule.name": name} for name in ("constant", "cosine", "step")],
    *[{"dtype": name} for name in ("float32", "bfloat16")],
    *[{"nan_policy": name} for name in ("stop", "skip", "off")],
    *[{"best_metric": name} for name in ("accuracy", "loss")],
]


@pytest.mark.parametrize("changes", ACCEPTED, ids=[str(i) for i in range(len(ACCEPTED))])
def test_accepted(changes):
    validate(_config(changes))


def test_check_values_refuses_a_bool_mesh_size():
    """check_types lets no bool through to check_values; check_values refuses it by itself too."""
    c = base_config()
    c.mesh.data = True
    with pytest.raises(ConfigError, match=r"^mesh.data=True must be a positive integer, or -1 for all devices left$"):
        config_lib.check_values(c)


def test_check_choice_message_lists_any_values():
    with pytest.raises(ConfigError) as e:
        config_lib.check_choice("n", 3, (1, 2))
    assert str(e.value) == "unknown n 3; valid: 1, 2"
    config_lib.check_choice("n", 2, (1, 2))


def test_warmup_is_clipped_to_the_run_and_eval_batch_defaults_to_batch():
    assert config_lib.warmup_steps(_config({"schedule.warmup_steps": 50, "total_steps": 10})) == 10
    assert config_lib.warmup_steps(_config({"schedule.warmup_steps": 5, "total_steps": 10})) == 5
    assert config_lib.eval_batch_size(_config({"batch_size": 64, "eval_batch_size": 0})) == 64
    assert config_lib.eval_batch_size(_config({"batch_size": 64, "eval_batch_size": 8})) == 8


def test_the_defaults():
    """base_config's defaults are the contract configs/*.py, docs and tooling build on (configs change only what
    differs): a default changes on purpose, here and in the docs together."""
    assert config_lib.MESH_AXES == ("stage", "data", "fsdp", "spatial", "model")
    assert base_config().to_dict() == {
        "seed": 0, "cpu_devices": 0,
        "mesh": {"stage": 1, "data": -1, "fsdp": 1, "spatial": 1, "model": 1},
        "sharding_rules": (("batch", ("data", "fsdp")), ("height", "spatial"), ("conv_in", "fsdp"),
                           ("conv_out", ("model", "fsdp")), ("embed", "fsdp"), ("hidden", ("model", "fsdp")),
                           ("classes", None), ("layers", "stage"), ("replicas", "data")),
        "model": {"name": "cnn", "num_classes": 10, "hidden_size": 128, "num_layers": 1, "bidirectional": False,
                  "pool": "last", "fused_gates": True, "unroll": 1, "dim": 256, "depth": 8, "patch_size": 2,
                  "kernel_size": 5, "width": 0, "bn_group": "global"},
        "data": {"name": "digits", "tfds_data_dir": "", "path": "", "val_path": "", "val_fraction": 0.1,
                 "split_seed": 0, "strict": False, "image_size": 0, "augment": "none", "crop_padding": 4,
                 "view": "image", "ucr_name": "JapaneseVowels", "num_threads": 4, "worker_count": 0, "prefetch": 2,
                 "synthetic_shape": (32, 32, 3), "synthetic_examples": 1024},
        "pipeline": {"microbatches": 4},
        "batch_size": 128, "eval_batch_size": 0, "total_steps": 1000, "log_every": 50, "eval_every": 500,
        "checkpoint_every": 500, "checkpoint_every_seconds": 0.0, "keep_checkpoints": 3, "keep_best_checkpoints": 0,
        "best_metric": "accuracy", "nan_policy": "stop", "init_from": "", "eval_step": 0, "log_grad_norm": True,
        "optimizer": {"name": "momentum", "lr": 0.1, "momentum": 0.9, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                      "weight_decay": 5e-4, "clip_norm": 0.0, "grad_accum_steps": 1, "lr_base_batch": 0},
        "schedule": {"name": "cosine", "warmup_steps": 0, "decay_steps_fraction": (0.5, 0.75), "decay_factor": 0.1,
                     "final_lr_fraction": 0.0},
        "dtype": "float32",
        "report": {"peak_flops_per_s": 0.0},
        "sync": {"mode": "allreduce", "every": 1, "staleness": 0, "grad_dtype": "float32"},
        "watchdog": {"timeout_s": 0.0, "floor_s": 300.0, "factor": 20.0},
    }
