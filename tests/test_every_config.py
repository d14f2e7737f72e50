"""Every file in configs/ and every registered model takes two steps through `python -m jaxdist.main`.

Tiny sizes, the config's own mesh, model family and optimizer: datasets that need a download become synthetic
images of their shape, wide models get narrow, the configs' CIFAR ResNets shallow (every registered depth
still runs: ResNet-20 as cifar_dp.py's, the others in cases of their own). A config added to configs/ or a
model added to the registry is covered without touching this file. The command lines run in forks of one
interpreter (tests/forked_cli.py), so 14 runs pay for one start-up.
"""
import importlib.util
import json
import math
import subprocess
import sys

import pytest

from jaxdist.data.synthetic import synthetic_shape
from jaxdist.models.registry import MODELS, SEQUENCE_MODELS, STACKED_MODELS
from tests.conftest import REPO

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
OFFLINE_DATA = ("digits", "ucr", "synthetic")
BASE_FOR_MODEL = "digits_dp.py"  # runs the registered models that no shipped config names


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The configs' CIFAR ResNets run as ResNet-8: the same blocks, one per stage instead of three, compile in half
# the time. cifar_dp.py keeps its ResNet-20, so that no case of its own has to build it (ResNet-56 has one).
SHALLOWER = {"resnet20": "resnet8", "resnet56": "resnet8"}
KEEPS_ITS_DEPTH = "cifar_dp.py"


def _tiny(config, model: str) -> list[str]:
    """Overrides that keep the config's mesh, model family and optimizer but make the run tiny."""
    args = ["--config.cpu_devices=8", "--config.total_steps=2", "--config.batch_size=16", "--config.eval_batch_size=16",
            "--config.log_every=1", "--config.eval_every=2", "--config.checkpoint_every=2",
            "--config.schedule.warmup_steps=0", "--config.data.synthetic_examples=32"]
    if config.data.name not in OFFLINE_DATA:  # needs a download: synthetic images of the dataset's own shape
        shape = synthetic_shape(config.data)
        args += ["--config.data.name=synthetic", f"--config.data.synthetic_shape=({','.join(map(str, shape))})"]
    elif config.data.name == "synthetic":
        args += ["--config.data.synthetic_shape=(64,64,3)"]  # spatial_highres' 256x256 takes minutes on CPU
    if model in SEQUENCE_MODELS:
        args += ["--config.model.hidden_size=16"]
    if model.startswith("resnet"):
        args += ["--config.model.width=4"]  # resnet50's 90 MiB of params made each step take seconds
    if model in STACKED_MODELS:
        args += ["--config.model.dim=16", f"--config.model.depth={2 * config.mesh.stage}"]
    return args


def _cases() -> dict[str, tuple[list[str], str, dict]]:
    """case id -> (command line without --workdir, model name, the config it starts from)."""
    cases = {}
    for name in CONFIGS:
        config = _load(name)
        model = config.model.name if name == KEEPS_ITS_DEPTH else SHALLOWER.get(config.model.name, config.model.name)
        cases[name[:-3]] = ([f"--config=configs/{name}", *_tiny(config, model),
                             *([f"--config.model.name={model}"] if model != config.model.name else [])], model, config)
    named = {c[1] for c in cases.values()}
    base = _load(BASE_FOR_MODEL)
    for model in sorted(set(MODELS) - named):
        args = [f"--config=configs/{BASE_FOR_MODEL}", f"--config.model.name={model}"]
        if model in SEQUENCE_MODELS:
            args.append("--config.data.view=rows")
        cases[f"model-{model}"] = ([*args, *_tiny(base, model)], model, base)
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_env):
    """Every case's command line in forks of one interpreter; case id -> (result, workdir)."""
    root = tmp_path_factory.mktemp("every_config")
    commands = [[*args, f"--workdir={root / case}"] for case, (args, _, _) in CASES.items()]
    proc = subprocess.run([sys.executable, "-m", "tests.forked_cli"], cwd=REPO, env=cli_env, input=json.dumps(commands),
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {case: (result, root / case) for case, result in zip(CASES, json.loads(proc.stdout))}


def test_every_registered_model_is_run():
    assert {model for _, model, _ in CASES.values()} == set(MODELS)


@pytest.mark.parametrize("case", CASES)
def test_takes_two_steps_through_the_cli(runs, case):
    result, workdir = runs[case]
    assert result["returncode"] == 0, result["stderr"][-3000:]
    _, model, config = CASES[case]
    facts = json.loads((workdir / "run.json").read_text())
    assert facts["model"] == model
    fixed = math.prod(n for n in config.mesh.values() if n != -1)
    assert facts["mesh"] == {axis: (8 // fixed if n == -1 else n) for axis, n in config.mesh.items()}
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert train[0]["loss"] != train[1]["loss"]  # the first update changed the model
    (evaluation,) = [r for r in rows if r["split"] == "eval"]
    assert evaluation["step"] == 2 and 0 <= evaluation["accuracy"] <= 1
    assert (workdir / "checkpoints" / "2").is_dir()
