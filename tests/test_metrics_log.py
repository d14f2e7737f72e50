"""metrics.jsonl can be trusted: strict JSON (null for NaN/inf), one row per (split, step) across resumes,
no torn line merged into the next row; --mode=eval writes eval.jsonl, also (not at all) in a read-only workdir."""
import collections
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from jaxdist import plot
from jaxdist.errors import ConfigError
from jaxdist.train.metrics import MetricsWriter, write_eval
from tests.conftest import REPO
from tests.helpers import run_cli


def _strict(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, as jq and JavaScript do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def _rows(workdir, name="metrics.jsonl") -> list[dict]:
    text = (workdir / name).read_text()
    assert text.endswith("\n")
    return [_strict(line) for line in text.splitlines()]


def _row(step, split="train", **metrics):
    return json.dumps({"step": step, "split": split, "loss": 1.0 / step, **metrics}) + "\n"


def test_non_finite_values_are_null_in_the_file_and_as_they_are_on_the_console(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")  # an earlier test may have left absl at WARNING
    with MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, "train", {"loss": 2.0, "accuracy": 0.5, "train_s": 1.0})
        writer.write(2, "train", {"loss": float("nan"), "accuracy": 0.5, "train_s": 2.0})
        writer.write(3, "train", {"loss": float("inf"), "accuracy": -float("inf"), "train_s": 3.0})
    assert [(r["loss"], r["accuracy"]) for r in _rows(tmp_path)] == [(2.0, 0.5), (None, 0.5), (None, None)]
    assert "loss=nan" in caplog.text and "loss=inf accuracy=-inf" in caplog.text
    # The curves read null as a gap, and closing drew them.
    xs, ys = plot.series(plot.read_metrics(str(tmp_path)), "train", "loss")
    assert xs == [1, 2, 3] and ys[0] == 2.0 and all(y != y for y in ys[1:])
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_resuming_drops_the_rows_after_the_checkpoint_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")  # an earlier test may have left absl at WARNING
    old = [_row(s) for s in range(1, 9)] + [_row(4, "eval"), _row(8, "eval")]
    old.sort(key=lambda line: json.loads(line)["step"])
    (tmp_path / "metrics.jsonl").write_text("".join(old))
    MetricsWriter(str(tmp_path), enabled=False, resume_step=4).close()  # not process 0: leaves the file alone
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(old)

    MetricsWriter(str(tmp_path), enabled=True, resume_step=4).close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(r for r in old if json.loads(r)["step"] <= 4)
    assert "dropped 5 rows after step 4" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]  # no temporary left

    MetricsWriter(str(tmp_path), enabled=True, resume_step=0).close()  # a fresh run in an old run's workdir
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("torn, kept, damaged", [
    ('{"step": 9, "split": "tra', [], True),  # cut mid-object
    ('{"step": 3, "split": "train", "loss": 0.3', [], True),  # cut mid-object, a step this run keeps
    ('{"step": 3, "split": "train", "loss": 0.3}', [3], False),  # whole but for its newline: kept, newline added
    ('{"step": 9, "split": "train", "loss": 0.1}', [], False),  # whole, after the resume step: logged again
])
def test_a_torn_last_line_never_merges_into_the_next_row(tmp_path, caplog, torn, kept, damaged):
    (tmp_path / "metrics.jsonl").write_text(_row(1) + _row(2) + torn)
    with MetricsWriter(str(tmp_path), enabled=True, resume_step=8) as writer:
        writer.write(9, "train", {"loss": 0.5})
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, *kept, 9]
    assert ("dropped its last line, damaged" in caplog.text) == damaged
    assert (torn in caplog.text) == damaged  # the warning shows the line


def test_a_damaged_line_inside_the_file_is_kept_for_a_person_to_judge(tmp_path):
    """Not a torn write (those are last): the writer drops nothing it cannot read; plot names the line."""
    (tmp_path / "metrics.jsonl").write_text(_row(1) + "garbage\n" + _row(2))
    MetricsWriter(str(tmp_path), enabled=True, resume_step=8).close()
    assert (tmp_path / "metrics.jsonl").read_text() == _row(1) + "garbage\n" + _row(2)
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        plot.read_metrics(str(tmp_path))


def test_plot_skips_a_torn_last_line_of_a_live_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(_row(1) + _row(2) + '{"step": 3, "spl')
    assert [r["step"] for r in plot.read_metrics(str(tmp_path))] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text(_row(1) + _row(2) + '{"step": 3, "spl\n')  # has its newline: damaged
    with pytest.raises(ConfigError, match="line 3 is not JSON"):
        plot.read_metrics(str(tmp_path))


def test_eval_writes_its_own_file_or_warns(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")  # an earlier test may have left absl at WARNING
    result = {"loss": 0.25, "accuracy": 0.9, "examples": 360}
    write_eval(str(tmp_path), 8, result, enabled=False)
    assert list(tmp_path.iterdir()) == []
    write_eval(str(tmp_path), 8, result, enabled=True)
    write_eval(str(tmp_path), 4, {**result, "loss": float("nan")}, enabled=True)
    first, second = _rows(tmp_path, "eval.jsonl")
    assert {k: first[k] for k in ("step", *result)} == {"step": 8, **result} and second["loss"] is None
    assert datetime.datetime.fromisoformat(first["time"]).tzinfo is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl"]  # no metrics.jsonl, TensorBoard, curves

    blocked = tmp_path / "blocked"
    (blocked / "eval.jsonl").mkdir(parents=True)  # a path no one (root included) can open as a file
    write_eval(str(blocked), 8, result, enabled=True)
    assert "eval.jsonl not written" in caplog.text and "eval step 8: loss=0.25" in caplog.text


# --- Through the command line


def _args(workdir, *extra):
    return ["--config=configs/digits_dp.py", f"--workdir={workdir}", "--config.total_steps=8",
            "--config.log_every=1", "--config.eval_every=4", "--config.checkpoint_every=4",
            "--config.schedule.warmup_steps=2", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env):
    """8 steps, a train row each, eval and checkpoint at 4 and 8."""
    workdir = tmp_path_factory.mktemp("trained")
    result = run_cli(cli_env, *_args(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_a_run_killed_after_logging_resumes_with_one_row_per_step(trained, cli_env, tmp_path):
    """As if killed after writing step 8's rows (one of them torn) but before checkpoint 8 was saved."""
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")
    before = _rows(workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "split": "ev')
    result = run_cli(cli_env, *_args(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 4" in result.stderr and "dropped 5 rows after step 4" in result.stderr
    assert "dropped its last line, damaged" in result.stderr
    rows, kept = _rows(workdir), [r for r in before if r["step"] <= 4]
    assert rows[:len(kept)] == kept  # the first run's rows up to the checkpoint, as they were
    assert collections.Counter((r["split"], r["step"]) for r in rows) == collections.Counter(
        [("train", s) for s in range(1, 9)] + [("eval", 4), ("eval", 8)])


def test_a_read_only_workdir_is_evaluated(trained, cli_env, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    # Root writes through chmod: without the capabilities that override file modes, it cannot either.
    as_user = [] if os.geteuid() else ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    if as_user and not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: chmod would not stop root's writes")
    subprocess.run(["chmod", "-R", "a-w", workdir], check=True)
    try:
        result = subprocess.run([*as_user, sys.executable, "-m", "jaxdist.main", *_args(workdir, "--mode=eval")],
                                cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["chmod", "-R", "u+w", workdir], check=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval step 8: loss=" in result.stderr and "eval result: {'loss':" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "eval.jsonl not written" in line]
    assert len(warnings) == 1 and warnings[0].startswith("W") and "Permission denied" in warnings[0]
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
