"""jaxdist.predict on a run trained here: the eval step's predictions for the same images, on any mesh,
the unreadable files named and skipped, and bad input refused in one line.

A tiny digits CNN is trained through the CLI; some of its test images are written as 8-bit PNG files. The
eval path is given the same 8-bit pixels, so predictions must agree to float reassociation.
"""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdist import inference
from jaxdist.data import sources
from jaxdist.train import checkpoint, loop
from tests.conftest import REPO
from tests.helpers import run_cli

IMAGES = 37  # over batches of 16: two full batches and a padded one


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env):
    """(workdir, folder of IMAGES test images as PNG, their labels): 40 steps, checkpoints 20 and 40."""
    root = tmp_path_factory.mktemp("predict")
    workdir = root / "run"
    proc = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.cpu_devices=8",
                   "--config.total_steps=40", "--config.checkpoint_every=20", "--config.eval_every=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = sources.load(inference.open_run(str(workdir)).config.data).test
    folder = root / "images"
    (folder / "more").mkdir(parents=True)
    labels = []
    for i in range(IMAGES):  # the last ones in a subfolder: folders are read at any depth, sorted
        image, label = test.source[i]
        path = folder / ("more" if i >= 30 else "") / f"{i:03d}.png"
        Image.fromarray(_eight_bit(image)[..., 0], mode="L").save(path)
        labels.append(label)
    return workdir, folder, np.asarray(labels)


def _eight_bit(image: np.ndarray) -> np.ndarray:
    """A digits image (float in [0, 1]) as the 8-bit pixels a PNG file holds."""
    return np.round(image * 255).astype(np.uint8)


def _predict(cli_env, workdir, *args):
    return run_cli(cli_env, f"--workdir={workdir}", *args, module="jaxdist.predict")


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def predicted(trained, cli_env, tmp_path_factory):
    """The latest checkpoint's predictions on the folder, 8 devices, batches of 16, top 3."""
    workdir, folder, _ = trained
    output = tmp_path_factory.mktemp("out") / "preds.jsonl"
    proc = _predict(cli_env, workdir, str(folder), f"--output={output}", "--cpu_devices=8", "--batch_size=16",
                    "--top_k=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, _records(output)


def _eval_path(workdir, step, labels):
    """Per-image probabilities of the eval forward pass on the written test images (their 8-bit pixels, through
    the run's eval transform), and the eval step's own accuracy on them."""
    run = inference.open_run(str(workdir), step)
    exp = loop.build_experiment(run.config)
    with checkpoint.Checkpointer(f"{workdir}/checkpoints", 1, read_only=True) as ckpt:
        state, _ = ckpt.restore(step, exp.abstract_state, exp.shardings)
    pixels = np.stack([_eight_bit(exp.data.test.source[i][0]) for i in range(IMAGES)])
    images = np.stack([exp.data.test.transform(p, None) for p in pixels])
    variables = exp.sync.model_variables(state)
    logits, _ = exp.model.apply(variables["params"], variables["batch_stats"], images, train=False)
    probabilities = np.asarray(jax.nn.softmax(logits))
    subset = sources.Split(sources.ArraySource(pixels, labels), exp.data.test.transform)
    accuracy = loop.evaluate(dataclasses.replace(exp, data=dataclasses.replace(exp.data, test=subset)),
                             loop.compile_eval_step(exp), state)["accuracy"]
    return probabilities, accuracy


def test_predictions_are_the_eval_steps_for_the_same_images(trained, predicted):
    workdir, folder, labels = trained
    proc, records = predicted
    expected_files = sorted(str(p) for p in folder.glob("*.png")) + sorted(str(p) for p in (folder / "more").glob("*.png"))
    assert [r["path"] for r in records] == expected_files
    probabilities, accuracy = _eval_path(workdir, 40, labels)
    for r, p in zip(records, probabilities):
        top = [int(t["class"]) for t in r["top_k"]]
        assert top == list(np.argsort(-p)[:3]), r["path"]
        np.testing.assert_allclose([t["probability"] for t in r["top_k"]], np.sort(p)[::-1][:3], rtol=1e-5, atol=1e-7)
    predicted_accuracy = np.mean([int(r["top_k"][0]["class"]) == label for r, label in zip(records, labels)])
    assert predicted_accuracy == pytest.approx(accuracy, abs=1e-6)  # the same count of the 37 (float32 there)
    assert 0.2 < accuracy < 1  # a model that learned something and still errs: the comparison can fail
    lines = proc.stdout.splitlines()  # the same predictions, one printed line per image
    assert len(lines) == IMAGES and lines[0].startswith(f"{records[0]['path']}: {records[0]['top_k'][0]['class']} (")
    assert f"predicted {IMAGES} images with {workdir}/checkpoints/40 on stage=1 data=8 fsdp=1 spatial=1 model=1 in " \
        in proc.stderr and " images/s" in proc.stderr


def test_a_kept_earlier_step_predicts_with_its_own_weights(trained, predicted, cli_env, tmp_path):
    workdir, folder, labels = trained
    output = tmp_path / "step20.csv"
    proc = _predict(cli_env, workdir, str(folder), "--step=20", f"--output={output}", "--cpu_devices=8",
                    "--batch_size=16", "--top_k=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(output.open()))
    probabilities, _ = _eval_path(workdir, 20, labels)
    assert [int(r["class_1"]) for r in rows] == list(probabilities.argmax(1))
    np.testing.assert_allclose([float(r["probability_1"]) for r in rows], probabilities.max(1), rtol=1e-5)
    latest = [r["top_k"][0]["probability"] for r in predicted[1]]
    assert not np.allclose([float(r["probability_1"]) for r in rows], latest, atol=1e-3)


@pytest.mark.parametrize("devices,mesh", [(1, ""), (8, "data=4,model=2")])
def test_same_predictions_on_any_mesh(trained, predicted, cli_env, tmp_path, devices, mesh):
    workdir, folder, _ = trained
    output = tmp_path / "preds.jsonl"
    proc = _predict(cli_env, workdir, str(folder), f"--output={output}", f"--cpu_devices={devices}",
                    "--batch_size=16", "--top_k=3", *([f"--mesh={mesh}"] if mesh else []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"model=2" in proc.stderr) == bool(mesh)
    records, reference = _records(output), predicted[1]
    assert [r["path"] for r in records] == [r["path"] for r in reference]
    assert [[t["class"] for t in r["top_k"]] for r in records] == [[t["class"] for t in r["top_k"]] for r in reference]
    np.testing.assert_allclose([[t["probability"] for t in r["top_k"]] for r in records],
                               [[t["probability"] for t in r["top_k"]] for r in reference], rtol=1e-5, atol=1e-7)


def test_unreadable_files_are_named_and_the_rest_predicted(trained, predicted, cli_env, tmp_path):
    workdir, folder, _ = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "010.png").write_bytes(os.urandom(500))  # replaces a good image: not an image at all
    good = (mixed / "011.png").read_bytes()
    (mixed / "011.png").write_bytes(good[:len(good) // 2])  # truncated
    (mixed / "notes.txt").write_text("not an image, not read")
    output = tmp_path / "preds.jsonl"
    proc = _predict(cli_env, workdir, str(mixed), f"--output={output}", "--cpu_devices=8", "--batch_size=16",
                    "--top_k=3")
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"jaxdist: error: 2 of {IMAGES} images could not be read (named "
                                                     f"above and in {output}); the other {IMAGES - 2} were predicted")
    for bad in ("010.png", "011.png"):
        assert f"cannot read image {mixed / bad}: " in proc.stderr
    records = _records(output)
    assert [r["path"] for r in records] == [p.replace(str(folder), str(mixed)) for p in (r["path"] for r in predicted[1])]
    for r, reference in zip(records, predicted[1]):
        if r["path"].endswith(("010.png", "011.png")):
            assert r["error"].startswith("cannot read image: ") and "top_k" not in r
        else:
            assert r["top_k"] == reference["top_k"]


def test_two_processes_predict_as_one_with_one_output(trained, predicted, cli_env, tmp_path):
    """jaxdist.launch --module jaxdist.predict: 2 processes of 4 devices, each reading its own rows of every
    batch. The records are the 1-process run's, printed and written once (by process 0); an image that
    cannot be read is named in the log of the process that read it, and both processes exit 5."""
    workdir, folder, _ = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "010.png").write_bytes(os.urandom(500))
    output = tmp_path / "preds.jsonl"
    proc = subprocess.run([sys.executable, "-m", "jaxdist.launch", "--nproc=2", "--devices_per_proc=4",
                           "--module=jaxdist.predict", "--", f"--workdir={workdir}", str(mixed), f"--output={output}",
                           "--batch_size=16", "--top_k=3"], cwd=REPO, env=cli_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 5, proc.stdout[-3000:]
    assert "[rank 0]" in proc.stdout and "[rank 1]" in proc.stdout
    (summary,) = [line for line in proc.stdout.splitlines() if f"predicted {IMAGES - 1} images with" in line]
    assert summary.startswith("[rank 0]") and " on stage=1 data=8 fsdp=1 " in summary  # 2 x 4 devices, one mesh
    assert proc.stdout.count(f"cannot read image {mixed / '010.png'}: ") == 1  # by the process that read it
    records, reference = _records(output), predicted[1]
    assert [r["path"] for r in records] == [p.replace(str(folder), str(mixed)) for p in (r["path"] for r in reference)]
    for r, ref in zip(records, reference):
        printed = [line.split("] ", 1)[0] for line in proc.stdout.splitlines() if f"] {r['path']}: " in line]
        assert printed == ["[rank 0"], printed  # its record, once, from process 0
        if r["path"].endswith("010.png"):
            assert r["error"].startswith("cannot read image: ") and "top_k" not in r
            continue
        assert [t["class"] for t in r["top_k"]] == [t["class"] for t in ref["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in r["top_k"]], [t["probability"] for t in ref["top_k"]],
                                   rtol=1e-5, atol=1e-7)


def test_images_of_any_size_and_mode_become_the_runs_input(trained, predicted, cli_env, tmp_path):
    """A 4x larger colour JPEG of each image: converted to grey and resized to 8x8 as the run's input, so the
    classes mostly agree with the 8x8 PNGs' (resampling twice moves pixels, JPEG adds noise). The 40-step model
    is unsure of a few images: 34 of 37 agreed with one draw of the augmentation's shifts, 33 with another; the
    top-left 8x8 pixels instead of the resize agree on 6."""
    workdir, folder, _ = trained
    large = tmp_path / "large"
    large.mkdir()
    for path in sorted(folder.rglob("*.png")):
        grey = Image.open(path)
        Image.merge("RGB", [grey, grey, grey]).resize((32, 32), Image.NEAREST).save(large / f"{path.stem}.jpg",
                                                                                    quality=95)
    output = tmp_path / "preds.jsonl"
    proc = _predict(cli_env, workdir, str(large), f"--output={output}", "--cpu_devices=8", "--batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [r["top_k"][0]["class"] for r in _records(output)]
    want = [r["top_k"][0]["class"] for r in predicted[1]]
    assert np.mean([a == b for a, b in zip(got, want)]) >= 0.85


def test_a_local_sgd_checkpoint_predicts_with_the_average_of_its_copies(trained, cli_env, tmp_path):
    """8 copies that differ (step 3 is not a sync step), predicted on 1 device: their average, as eval sees it."""
    _, folder, labels = trained
    workdir = tmp_path / "local_sgd"
    proc = run_cli(cli_env, "--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.cpu_devices=8",
                   "--config.sync.mode=local_sgd", "--config.sync.every=2", "--config.total_steps=3",
                   "--config.checkpoint_every=3", "--config.optimizer.lr=0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = tmp_path / "preds.jsonl"
    proc = _predict(cli_env, workdir, str(folder), f"--output={output}", "--cpu_devices=1", "--top_k=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    probabilities, _ = _eval_path(workdir, 3, labels)
    records = _records(output)
    assert [int(r["top_k"][0]["class"]) for r in records] == list(probabilities.argmax(1))
    np.testing.assert_allclose([r["top_k"][0]["probability"] for r in records], probabilities.max(1), rtol=1e-5)

# --- Bad input: one line `jaxdist: error: ...`, exit 2, no output file. {run}: the trained workdir,
# {images}: its PNG folder, {tmp}: a scratch folder with the variants below.
BAD = {
    "workdir missing": (["--workdir={tmp}/nothing", "{images}"], "--workdir '{tmp}/nothing' does not exist"),
    "workdir is a URL": (["--workdir=gs://bucket/runs/digits", "{images}"],
                         "--workdir=gs://bucket/runs/digits is a URL; jaxdist reads and writes local paths only"),
    "output is a URL": (["--workdir={run}", "--output=gs://bucket/preds.jsonl", "{images}"],
                        "--output=gs://bucket/preds.jsonl is a URL; "),
    "workdir without checkpoints": (["--workdir={tmp}/empty", "{images}"], "no checkpoints in {tmp}/empty/checkpoints"),
    "step not kept": (["--workdir={run}", "--step=30", "{images}"], "--step=30 is not kept in {run}/checkpoints; "
                                                                    "kept steps: 20, 40"),
    "negative step": (["--workdir={run}", "--step=-1", "{images}"], "--step=-1"),
    "no paths": (["--workdir={run}"], "no images given: python -m jaxdist.predict --workdir=RUN PATH..."),
    "path missing": (["--workdir={run}", "{images}/000.png", "{tmp}/nope.png"], "{tmp}/nope.png does not exist"),
    "folder without images": (["--workdir={run}", "{tmp}/empty"], "folder {tmp}/empty has no .jpg/.jpeg/.png files"),
    "output exists": (["--workdir={run}", "--output={tmp}/taken.jsonl", "{images}"],
                      "--output={tmp}/taken.jsonl exists; predict never overwrites a file"),
    "output format unknown": (["--workdir={run}", "--output={tmp}/preds.txt", "{images}"],
                              "the name must end in .jsonl or .csv"),
    "output folder missing": (["--workdir={run}", "--output={tmp}/no/dir/preds.csv", "{images}"],
                              "cannot write in {tmp}/no/dir"),
    "top_k above the classes": (["--workdir={run}", "--top_k=11", "{images}"], "--top_k=11 must be between 1 and 10"),
    "negative top_k": (["--workdir={run}", "--top_k=-2", "{images}"], "--top_k=-2"),
    "batch the devices do not divide": (["--workdir={run}", "--cpu_devices=8", "--batch_size=12", "{images}"],
                                        "--batch_size=12 is not divisible by the 8 devices and processes that split a batch"),
    "negative batch": (["--workdir={run}", "--batch_size=-16", "{images}"], "--batch_size=-16"),
    "mesh over other devices": (["--workdir={run}", "--cpu_devices=8", "--mesh=data=3", "{images}"],
                                "uses 3 devices but 8 are available"),
    "mesh axis unknown": (["--workdir={run}", "--mesh=tensor=2", "{images}"],
                          "--mesh='tensor=2': each part must be AXIS=SIZE with AXIS one of stage, data"),
    "mesh size not a number": (["--workdir={run}", "--mesh=data=two", "{images}"], "each part must be AXIS=SIZE"),
    "checkpoint file changed": (["--workdir={tmp}/flipped", "{images}"], "changed after it was saved"),
    "run.json missing": (["--workdir={tmp}/no_run_json", "{images}"], "cannot read {tmp}/no_run_json/run.json"),
    "run.json from before predict": (["--workdir={tmp}/old_run_json", "{images}"],
                                     "does not say how images become model input"),
    "a run on sequences": (["--workdir={tmp}/sequences", "{images}"], "not images: predict reads image files"),
    "classes of another run": (["--workdir={tmp}/other_classes", "{images}"],
                               "classes.json names 3 classes but the checkpoint's model has 10"),
    "config of a newer jaxdist": (["--workdir={tmp}/newer", "{images}"], "holds a config this jaxdist cannot run"),
}


def _variant(trained_run, tmp, name, change):
    workdir = tmp / name
    shutil.copytree(trained_run, workdir)
    change(workdir)


def _newer_config(workdir):
    """A field this jaxdist does not know in the saved config, with the checksums updated to match."""
    step = workdir / "checkpoints" / "40"
    path = step / "config" / "metadata"  # Orbax's JsonCheckpointHandler file
    config = json.loads(path.read_text())
    config["model"]["experts"] = 4
    path.write_text(json.dumps(config))
    sums = json.loads((step / checkpoint.CHECKSUMS).read_text())
    sums["sha256"][str(path.relative_to(step))] = checkpoint._sha256(str(path))
    (step / checkpoint.CHECKSUMS).write_text(json.dumps(sums))


@pytest.fixture(scope="module")
def refusals(trained, cli_env, tmp_path_factory):
    workdir, folder, _ = trained
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    (tmp / "taken.jsonl").write_text("an earlier result\n")
    facts = json.loads((workdir / "run.json").read_text())
    variants = {
        "flipped": lambda w: _flip_a_byte(w / "checkpoints" / "40"),
        "no_run_json": lambda w: (w / "run.json").unlink(),
        "old_run_json": lambda w: (w / "run.json").write_text(json.dumps({k: v for k, v in facts.items() if k != "input"})),
        "sequences": lambda w: (w / "run.json").write_text(json.dumps({**facts, "input": None})),
        "other_classes": lambda w: (w / "classes.json").write_text('["a", "b", "c"]'),
        "newer": _newer_config,
    }
    for name, change in variants.items():
        _variant(workdir, tmp, name, change)
    values = {"run": workdir, "images": folder, "tmp": tmp}
    commands = [[a.format(**values) for a in args] for args, _ in BAD.values()]
    launcher = [sys.executable, str(REPO / "tests" / "core_only.py"), "tests.forked_cli", "jaxdist.predict"]
    done = subprocess.run(launcher, input=json.dumps(commands), capture_output=True, text=True, cwd=REPO, env=cli_env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(BAD, json.loads(done.stdout))), values


def _flip_a_byte(step):
    path = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(refusals, case):
    results, values = refusals
    result, expected = results[case], BAD[case][1].format(**values)
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["returncode"] == 2, result["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("jaxdist: error: ") and expected in lines[0], lines
    assert result["stdout"] == ""
    assert sorted(p.name for p in values["tmp"].iterdir() if p.is_file()) == ["taken.jsonl"]
    assert (values["tmp"] / "taken.jsonl").read_text() == "an earlier result\n"
