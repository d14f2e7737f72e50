"""Bad input, class by class: one line `jaxdist: error: ...`, exit 2, no traceback, the workdir untouched.

Each case is a command line as a user types it, run by `python -m jaxdist.main`'s own code in a fork
of one interpreter (tests/forked_cli.py; one start instead of 60), as after a plain `pip install .`.
Each expected fragment names the mistake, so a check that stops firing, or fires for another reason,
fails its case.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxdist.config import base_config
from jaxdist.errors import ConfigError
from jaxdist.train import memory
from tests.conftest import REPO
from tests.helpers import run_cli

RUN = ["--config=configs/digits_dp.py"]  # --workdir is added per case

CONFIG_FILES = {  # name -> source of a broken config file
    "syntax.py": "def get_config(:\n",
    "imports.py": "import no_such_module_anywhere\n",
    "no_get_config.py": "CONFIG = {}\n",
    "raises.py": "def get_config():\n    x = 1\n    raise ValueError('boom')\n",
    "wrong_type.py": "def get_config():\n    return {'batch_size': 128}\n",
    "string_batch.py": "from jaxdist.config import base_config\n\ndef get_config():\n    c = base_config()\n"
                       "    c.batch_size = '128'\n    return c\n",
    "extra_field.py": "from jaxdist.config import base_config\n\ndef get_config():\n    c = base_config()\n"
                      "    c.batchsize = 64\n    return c\n",
    "not_from_base.py": "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'seed': 0})\n",
}

CASES = {
    # --- The config file fails to load, in any way
    "missing config file": (["--config=configs/nope.py"], "config file 'configs/nope.py' does not exist"),
    "missing config file with overrides": (["--config=configs/nope.py", "--config.batch_size=3"],
                                           "config file 'configs/nope.py' does not exist"),
    "config is not python": (["--config=README.md"], "config file README.md is not a Python file"),
    "syntax error": (["--config={files}/syntax.py"], "syntax.py, line 1: syntax error"),
    "import error": (["--config={files}/imports.py"], "imports.py, line 1: ModuleNotFoundError"),
    "no get_config": (["--config={files}/no_get_config.py"], "defines no get_config() function"),
    "get_config raises": (["--config={files}/raises.py"], "raises.py, line 3: get_config() raised ValueError: boom"),
    "get_config takes no arg": (["--config=configs/digits_dp.py:large"], "get_config('large') raised TypeError"),
    "returns a dict": (["--config={files}/wrong_type.py"], "returned dict, not an ml_collections.ConfigDict"),
    "field of the wrong type": (["--config={files}/string_batch.py"], "string_batch.py, line 5: get_config() raised TypeError"),
    "field set by the file is unknown": (["--config={files}/extra_field.py"], "unknown config field 'batchsize' set by"),
    "config not from base_config": (["--config={files}/not_from_base.py"], "the config has no field"),
    # --- Overrides: unknown fields (full path, suggestions) and values of the wrong type (sentences)
    "misspelt field": ([*RUN, "--config.batchsize=3"], "unknown config field 'batchsize'; did you mean 'batch_size'"),
    "misspelt nested field": ([*RUN, "--config.model.depht=3"], "unknown config field 'model.depht'; did you mean "
                                                               "'model.depth'"),
    "unknown section": ([*RUN, "--config.mesh.tensor=2"], "unknown config field 'mesh.tensor'; valid fields of mesh"),
    "field under a value": ([*RUN, "--config.seed.x=1"], "'seed.x': seed is a value, not a group of fields"),
    "bool from a word": ([*RUN, "--config.log_grad_norm=yes"], "log_grad_norm takes true or false"),
    "int from text": ([*RUN, "--config.batch_size=abc"], "batch_size takes an integer"),
    "int from a float": ([*RUN, "--config.seed=1.5"], "seed takes an integer"),
    "float from text": ([*RUN, "--config.optimizer.lr=fast"], "optimizer.lr takes a number"),
    "section given a value": ([*RUN, "--config.mesh=3"], "mesh is a group of fields; set them one by one"),
    "tuple unparsable": ([*RUN, "--config.data.synthetic_shape=(1,2"], "data.synthetic_shape takes a tuple"),
    # --- Values that type-check but mean nothing
    "lr nan": ([*RUN, "--config.optimizer.lr=nan"], "optimizer.lr=nan is not a finite number"),
    "lr inf": ([*RUN, "--config.optimizer.lr=inf"], "optimizer.lr=inf is not a finite number"),
    "lr negative": ([*RUN, "--config.optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be a number > 0"),
    "clip_norm nan": ([*RUN, "--config.optimizer.clip_norm=nan"], "optimizer.clip_norm=nan is not a finite number"),
    "momentum above 1": ([*RUN, "--config.optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be a number in [0, 1)"),
    "negative weight decay": ([*RUN, "--config.optimizer.weight_decay=-1e-4"], "weight_decay=-0.0001 must be"),
    "negative eval_batch_size": ([*RUN, "--config.eval_batch_size=-8"], "eval_batch_size=-8 must be an integer >= 0"),
    "negative image_size": ([*RUN, "--config.data.image_size=-5"], "data.image_size=-5 must be an integer >= 0"),
    "negative cpu_devices": ([*RUN, "--config.cpu_devices=-1"], "cpu_devices=-1 must be an integer >= 0"),
    "negative seed": ([*RUN, "--config.seed=-3"], "seed=-3 must be an integer >= 0"),
    "zero total_steps": ([*RUN, "--config.total_steps=0"], "total_steps=0 must be an integer >= 1"),
    "zero log_every": ([*RUN, "--config.log_every=0"], "log_every=0 must be an integer >= 1"),
    "zero keep_checkpoints": ([*RUN, "--config.keep_checkpoints=0"], "keep_checkpoints=0 must be an integer >= 1"),
    "negative save interval": ([*RUN, "--config.checkpoint_every_seconds=-5"], "checkpoint_every_seconds=-5.0 must"),
    "one class": ([*RUN, "--config.model.num_classes=1"], "model.num_classes=1 must be an integer >= 2"),
    "val_fraction above 1": ([*RUN, "--config.data.val_fraction=1.5"], "data.val_fraction=1.5 must be a number in (0, 1)"),
    "zero threads": ([*RUN, "--config.data.num_threads=0"], "data.num_threads=0 must be an integer >= 1"),
    "decay point beyond the run": ([*RUN, "--config.schedule.decay_steps_fraction=(0.5,1.5)"],
                                   "schedule.decay_steps_fraction=(0.5, 1.5) must hold fractions"),
    "zero-sized synthetic shape": ([*RUN, "--config.data.synthetic_shape=(0,2,3)"], "data.synthetic_shape=(0, 2, 3)"),
    "rules not pairs": ([*RUN, "--config.sharding_rules=abc"], "sharding rule 'abc' must be a pair"),
    "rules name an unknown axis": ([*RUN, "--config.sharding_rules=(('batch','pipeline'),)"],
                                   "names an unknown mesh axis; valid: stage, data"),
    # --- Choices
    "unknown model": ([*RUN, "--config.model.name=vgg"], "unknown model.name 'vgg'; valid: cnn,"),
    "unknown dataset": ([*RUN, "--config.data.name=imagenet"], "unknown data.name 'imagenet'; valid:"),
    "unknown optimizer": ([*RUN, "--config.optimizer.name=rmsprop"], "unknown optimizer.name 'rmsprop'; valid: sgd,"),
    "unknown schedule": ([*RUN, "--config.schedule.name=linear"], "unknown schedule.name 'linear'; valid:"),
    "unknown augmentation": ([*RUN, "--config.data.augment=mixup"], "unknown data.augment 'mixup'; valid: none, flip,"),
    "unknown dtype": ([*RUN, "--config.dtype=float16"], "unknown dtype 'float16'; valid: float32, bfloat16"),
    # --- Meshes that do not fit the devices
    "mesh axis zero": ([*RUN, "--config.mesh.data=0"], "mesh.data=0 must be a positive integer, or -1"),
    "mesh product": ([*RUN, "--config.mesh.data=3", "--config.mesh.model=2"], "uses 6 devices but 8 are available"),
    "mesh -1 does not divide": ([*RUN, "--config.mesh.model=3"], "does not divide the 8 available"),
    "batch not divisible": ([*RUN, "--config.batch_size=100"], "batch_size=100 is not divisible by the 8 batch shards"),
    # --- Data that is not there or cannot train a classifier
    "missing image folder": ([*RUN, "--config.data.name=folder", "--config.data.path=/nonexistent/images"],
                             "image folder '/nonexistent/images' does not exist"),
    "folder of unreadable images": ([*RUN, "--config.data.name=folder", "--config.data.path={files}/garbage"],
                                    "can be read (4 files"),
    "folder with one class": ([*RUN, "--config.data.name=folder", "--config.data.path={files}/one_class"],
                              "has 1 class subfolder (cat); a classifier needs"),
    "tfds not prepared": ([*RUN, "--config.data.name=cifar10", "--config.data.tfds_data_dir=/nonexistent/tfds"],
                          "tfds dataset 'cifar10' is not prepared in /nonexistent/tfds; prepare it once"),
    # --- Resources beyond the machine: refused before compiling, with the numbers
    "batch beyond memory": ([*RUN, "--config.batch_size=80000000"], "input batches of 80000000 images of (8, 8, 1)"),
    "model beyond memory": ([*RUN, "--config.model.name=convmixer", "--config.model.dim=16384", "--config.model.depth=4"],
                            "the train state, 8.02 GiB per device x 8 devices"),
    # --- Workdirs that cannot be one
    "workdir is a file": ([*RUN, "--workdir={files}/a_file"], "is a file, not a directory"),
    "workdir under a file": ([*RUN, "--workdir={files}/a_file/run"], "cannot be created: {files}/a_file is a file"),
    # --- URLs where jaxdist reads and writes local paths (a gs:// workdir once wrote into a local "gs:" folder)
    "workdir is a URL": ([*RUN, "--workdir=gs://bucket/runs/cifar"],
                         "--workdir=gs://bucket/runs/cifar is a URL; jaxdist reads and writes local paths only: mount "
                         "the bucket on every host (gcsfuse, or any shared filesystem) and give the mount point, e.g. "
                         "--workdir=/mnt/BUCKET/runs/cifar"),
    "eval workdir is a URL": ([*RUN, "--mode=eval", "--workdir=gs://bucket/run"], "--workdir=gs://bucket/run is a URL"),
    "data.path is a URL": ([*RUN, "--config.data.name=cifar10", "--config.data.path=gs://bucket/cifar"],
                           "data.path=gs://bucket/cifar is a URL; "),
    "data.val_path is a URL": ([*RUN, "--config.data.name=folder", "--config.data.path={files}/one_class",
                                "--config.data.val_path=https://example.com/val"],
                               "data.val_path=https://example.com/val is a URL"),
    "init_from is a URL": ([*RUN, "--config.init_from=s3://bucket/run"], "init_from=s3://bucket/run is a URL; "),
    # --- Mismatched resume (a finished 8-step run) and init_from
    "total_steps below the checkpoint": ([*RUN, "--workdir={trained}", "--config.total_steps=4"],
                                         "total_steps=4 is below step 8, the latest checkpoint"),
    "resume with another batch": ([*RUN, "--workdir={trained}", "--config.batch_size=64"],
                                  "was written by a different config (batch_size 128 -> 64)"),
    "resume with another optimizer": ([*RUN, "--workdir={trained}", "--config.optimizer.name=adamw"],
                                      "optimizer.name 'momentum' -> 'adamw'"),
    "resume with another model": ([*RUN, "--workdir={trained}", "--config.model.name=resnet8"],
                                  "model.name 'cnn' -> 'resnet8'"),
    "init_from nothing": ([*RUN, "--config.init_from=/nonexistent/run"], "init_from='/nonexistent/run' has no checkpoints"),
    "init_from unreadable": ([*RUN, "--config.init_from={files}/broken_run"], "cannot be read"),
    "eval without checkpoints": ([*RUN, "--mode=eval"], "no checkpoints in"),
    # --- Multi-process settings
    "process_id out of range": ([*RUN, "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
                                "process_id=2 must be in [0, num_processes=2)"),
    "coordinator without num_processes": ([*RUN, "--coordinator_address=127.0.0.1:1"], "needs --num_processes and "
                                                                                      "--process_id too"),
    "coordinator address without port": ([*RUN, "--coordinator_address=localhost", "--num_processes=2",
                                          "--process_id=0"], "must be HOST:PORT"),
    "process that never joins": ([*RUN, "--coordinator_address=127.0.0.1:{free_port}", "--num_processes=3",
                                  "--process_id=0", "--distributed_timeout=1"], "processes 1, 2 of 3 did not join within 1s"),
    "coordinator port in use": ([*RUN, "--coordinator_address=127.0.0.1:{busy_port}", "--num_processes=2",
                                 "--process_id=0"], "coordinator port {busy_port} is already in use"),
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, cli_env):
    """Files the cases name: broken config files, image folders, a trained run, a busy port."""
    files = tmp_path_factory.mktemp("files")
    for name, source in CONFIG_FILES.items():
        (files / name).write_text(source)
    (files / "a_file").write_text("not a directory")
    for i, cls in enumerate(["cat", "dog"] * 2):
        (files / "garbage" / cls).mkdir(parents=True, exist_ok=True)
        (files / "garbage" / cls / f"{i}.png").write_bytes(b"not a png")
    (files / "one_class" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(files / "one_class" / "cat" / f"{i}.png")
    trained = tmp_path_factory.mktemp("trained")
    result = run_cli(cli_env, *RUN, f"--workdir={trained}", "--config.total_steps=8", "--config.checkpoint_every=8",
                     "--config.eval_every=8")
    assert result.returncode == 0, result.stderr[-2000:]
    broken = files / "broken_run" / "checkpoints" / "8"
    broken.mkdir(parents=True)
    (broken / "_CHECKPOINT_METADATA").write_text("{not json")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as free:  # a loopback port nobody listens on
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
    yield {"files": files, "trained": trained, "busy_port": busy.getsockname()[1], "free_port": free_port}
    busy.close()


def _listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")) if path.is_dir() else None


@pytest.fixture(scope="module")
def outcomes(fixtures, cli_env, tmp_path_factory):
    """Every case run once: (command, result, workdir before, workdir after)."""
    values = {k: str(v) for k, v in fixtures.items()}
    commands, workdirs, before = [], [], []
    for name, (args, _) in CASES.items():
        args = [a.format(**values) for a in args]
        if not any(a.startswith("--workdir") for a in args):
            workdir = tmp_path_factory.mktemp("run")
            (workdir / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run's file, not to be touched
            args.append(f"--workdir={workdir}")
        workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir"))
        commands.append(args)
        workdirs.append(workdir)
        before.append(_listing(pathlib.Path(workdir)))
    launcher = [sys.executable, str(REPO / "tests" / "core_only.py"), "tests.forked_cli"]
    done = subprocess.run(launcher, input=json.dumps(commands), capture_output=True, text=True, cwd=REPO,
                          env=cli_env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    after = [_listing(pathlib.Path(w)) for w in workdirs]
    return {name: (r, b, a, values) for name, r, b, a in zip(CASES, results, before, after)}


def test_the_table_spans_every_class_of_mistake():
    assert len(CASES) >= 70


def test_a_compiled_step_beyond_memory_is_refused_with_the_numbers():
    """The second memory check, on the compiled step's own count (parallel/report.py), before the first step."""
    config = base_config()
    with pytest.raises(ConfigError, match=r"the compiled train step needs .* GiB.*, but .* is .* GiB; lower batch_size"):
        memory.check_step(config, 2**50)
    memory.check_step(config, 2**20)  # a MiB fits anywhere


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, outcomes):
    result, before, after, values = outcomes[case]
    expected = CASES[case][1].format(**values)
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["returncode"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("jaxdist: error: ") and expected in lines[0], lines
    assert after == before  # same files, same sizes: nothing written, nothing removed


@pytest.mark.parametrize("inside", [False, True])
def test_a_workdir_this_user_cannot_write_is_refused(inside, cli_env, tmp_path):
    """An existing read-only workdir, or one to be created in a read-only directory: one line, before compiling."""
    locked = tmp_path / "locked"
    locked.mkdir()
    workdir = locked / "run" if inside else locked
    # Root writes through chmod: without the capabilities that override file modes, it cannot either.
    as_user = [] if os.geteuid() else ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    if as_user and not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: chmod would not stop root's writes")
    locked.chmod(0o555)
    try:
        result = subprocess.run([*as_user, sys.executable, "-m", "jaxdist.main", *RUN, f"--workdir={workdir}"],
                                cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    expected = (f"--workdir={workdir} cannot be created: {locked} is not writable by this user" if inside
                else f"--workdir={workdir} is not writable by this user")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"jaxdist: error: {expected}"), lines
    assert list(locked.iterdir()) == []


def test_a_containers_memory_limit_is_the_budget(tmp_path, monkeypatch):
    """In a container (cgroup v2 files, written here in their format) the limit minus what is used counts,
    not the host's free memory."""
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    monkeypatch.setattr(memory, "CGROUP", str(tmp_path))
    assert memory._host_available() == 2 * 2**30
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the host's
    assert memory._host_available() > 2 * 2**30
