"""Learning curves: the loop draws curves.png at each eval from metrics.jsonl, records the training time
they are plotted against, and `python -m jaxdist.plot` overlays runs or refuses bad input in one line."""
import json
import shutil

import numpy as np
import pytest

from jaxdist import plot
from jaxdist.errors import ConfigError
from jaxdist.train import loop
from jaxdist.train.metrics import MetricsWriter
from tests.helpers import run_cli, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real 4-step run on 8 devices, logging every step, evaluating at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("run") / "digits_cnn"
    config = tiny_config("cnn", dict(data=8), total_steps=4, log_every=1, eval_every=2, checkpoint_every=4)
    loop.train_and_evaluate(config, str(workdir))
    return workdir, config


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_curves_png_is_redrawn_at_the_last_eval(run, tmp_path):
    workdir, _ = run
    drawn = (workdir / "curves.png").read_bytes()
    assert drawn.startswith(b"\x89PNG")
    copy = tmp_path / workdir.name
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("curves.png", "checkpoints", "tensorboard"))
    # The same metrics render to the same bytes; drawn only at the first eval, the picture would lack step 4.
    assert (copy / "curves.png").exists() is False and open(plot.write_curves(str(copy)), "rb").read() == drawn


def test_closing_draws_lines_written_after_the_last_eval(tmp_path):
    """A run stopped between evals (signal, non-finite loss) still leaves a picture of all its lines."""
    with MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, "train", {"loss": 2.0, "accuracy": 0.1, "images_per_s": 10.0, "train_s": 1.0})
        writer.write(1, "eval", {"loss": 2.1, "accuracy": 0.1, "train_s": 1.0})
        first = (tmp_path / "curves.png").read_bytes()
        writer.write(2, "train", {"loss": 1.0, "accuracy": 0.5, "images_per_s": 12.0, "train_s": 2.0})
        assert (tmp_path / "curves.png").read_bytes() == first  # no eval yet: not redrawn at every line
    closed = (tmp_path / "curves.png").read_bytes()
    assert closed != first and closed == open(plot.write_curves(str(tmp_path)), "rb").read()


def test_a_picture_that_cannot_be_written_is_a_warning_and_the_metrics_go_on(tmp_path, caplog):
    (tmp_path / "curves.png").mkdir()  # savefig fails with IsADirectoryError
    with MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, "eval", {"loss": 2.1, "accuracy": 0.1, "train_s": 1.0})
        writer.write(2, "train", {"loss": 1.0, "accuracy": 0.5, "images_per_s": 12.0, "train_s": 2.0})
    assert [r.getMessage() for r in caplog.records if "could not write" in r.getMessage()] == [
        f"could not write curves.png: [Errno 21] Is a directory: '{tmp_path / 'curves.png'}'"] * 2  # eval, close
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_train_seconds_accumulate_and_agree_with_images_per_s(run):
    workdir, config = run
    records = _records(workdir)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    seconds = [r["train_s"] for r in train]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))
    # Each one-step window: train_s grows by that step's time, the time images_per_s was computed from.
    for previous, r in zip(seconds, train[1:]):
        assert r["images_per_s"] * (r["train_s"] - previous) == pytest.approx(config.batch_size, rel=1e-6)
    evals = {r["step"]: r["train_s"] for r in records if r["split"] == "eval"}
    assert evals == {2: seconds[1], 4: seconds[3]}  # eval time is not training time


def test_run_json_says_what_ran(run):
    workdir, config = run
    facts = json.loads((workdir / "run.json").read_text())
    assert facts["devices"] == 8 and facts["mesh"]["data"] == 8 and facts["processes"] == 1
    assert facts["global_batch"] == config.batch_size and facts["total_steps"] == 4
    assert facts["train_examples"] + facts["test_examples"] == 1797  # scikit-learn's digits
    assert facts["test_examples"] == _records(workdir)[-1]["examples"]
    assert facts["compile_s"] > 0


def test_figure_plots_the_file_values(run):
    workdir, _ = run
    records = _records(workdir)
    fig = plot.curves_figure({"a": plot.read_metrics(str(workdir))}, x="time")
    loss, accuracy, speed = fig.axes
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    np.testing.assert_allclose(loss.lines[0].get_xydata(), [[r["train_s"], r["loss"]] for r in train])
    np.testing.assert_allclose(loss.lines[1].get_xydata(), [[r["train_s"], r["loss"]] for r in evals])
    np.testing.assert_allclose(accuracy.lines[1].get_ydata(), [r["accuracy"] for r in evals])
    np.testing.assert_allclose(speed.lines[0].get_ydata(), [r["images_per_s"] for r in train])


def test_series_of_a_resumed_run():
    """Resumed from step 2 after logging step 3: step 3 keeps its second record, and the second process's
    clock (from 0 again) starts where the first one's ended."""
    records = [{"step": s, "split": "train", "loss": l, "train_s": t}
               for s, l, t in [(1, 5.0, 1.0), (2, 4.0, 2.0), (3, 3.0, 3.0), (3, 2.5, 0.5), (4, 2.0, 1.5)]]
    assert plot.series(records, "train", "loss") == ([1, 2, 3, 4], [5.0, 4.0, 2.5, 2.0])
    assert plot.series(records, "train", "loss", x="time") == ([1.0, 2.0, 3.5, 4.5], [5.0, 4.0, 2.5, 2.0])


def test_plot_cli_overlays_runs(run, tmp_path, cli_env):
    workdir, _ = run
    other = tmp_path / "other"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    out = tmp_path / "both.png"
    proc = run_cli(cli_env, str(workdir), str(other), f"--out={out}", "--x=time", module="jaxdist.plot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("content, problem", [
    (None, "has no metrics.jsonl"),
    ('{"step": 1, "spl\n{"step": 2, "split": "train", "loss": 1.0}\n', "line 1 is not JSON"),
    ('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl\n', "line 2 is not JSON"),  # has its newline
    ('[1, 2]\n', "line 1 is not a metrics record"),
    ('{"step": "1", "split": "train"}\n', "line 1 is not a metrics record"),
    ("\n", "has no records yet"),
])
def test_bad_metrics_are_named(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ConfigError, match=problem):
        plot.read_metrics(str(tmp_path))


@pytest.mark.parametrize("args, problem", [
    ([], "name at least one run"),
    (["{missing}"], "has no metrics.jsonl; pass the --workdir"),
    (["{run}", "--out={missing}/x.png"], "cannot write"),
    (["gs://bucket/runs/a"], "RUN=gs://bucket/runs/a is a URL; jaxdist reads and writes local paths only"),
    (["{run}", "--out=gs://bucket/x.png"], "--out=gs://bucket/x.png is a URL; "),
])
def test_plot_cli_refuses_in_one_line(run, tmp_path, cli_env, args, problem):
    workdir, _ = run
    args = [a.format(missing=tmp_path / "nope", run=workdir) for a in args]
    if not any(a.startswith("--out") for a in args):
        args.append(f"--out={tmp_path / 'x.png'}")
    proc = run_cli(cli_env, *args, module="jaxdist.plot")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("jaxdist: error: ") and problem in proc.stderr
