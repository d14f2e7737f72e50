"""The experiment scripts end to end in their --smoke modes: each writes its table and plot, and every
number in the table is recomputed here from the files the runs wrote (metrics.jsonl, run.json,
parallel_report.json, raw.jsonl), so a table that misreads or misquotes them fails."""
import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

MIB = 2**20


def _smoke(script, out, env):
    proc = subprocess.run([sys.executable, f"experiments/{script}.py", "--smoke", f"--out={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "results.md")
    return out


def _table(out) -> list[dict]:
    lines = [l for l in (out / "results.md").read_text().splitlines() if l.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _json(path):
    return json.loads(path.read_text())


def _is_png(path):
    return path.read_bytes().startswith(b"\x89PNG")


def _close(cell: str, value: float):
    return float(cell) == pytest.approx(value, rel=1e-3, abs=1e-12)  # the table keeps 4 significant digits


@pytest.fixture(scope="module")
def single_vs_distributed(tmp_path_factory, cli_env):
    return _smoke("single_vs_distributed", tmp_path_factory.mktemp("svd"), cli_env)


def test_single_vs_distributed_table_is_read_from_the_runs(single_vs_distributed):
    out = single_vs_distributed
    rows = _table(out)
    assert [r["run"] for r in rows] == ["1 device", "4 devices DP", "4 devices hybrid"]
    assert [r["mesh"] for r in rows] == ["-", "data=4", "fsdp=2 model=2"]
    seconds, losses = {}, {}
    for row in rows:
        run = out / "runs" / row["run"].replace(" ", "_")
        records, facts = _records(run), _json(run / "run.json")
        train = [r for r in records if r["split"] == "train"]
        final = [r for r in records if r["split"] == "eval"][-1]
        assert int(row["devices"]) == facts["devices"] == (1 if row["run"] == "1 device" else 4)
        assert int(row["steps"]) == facts["total_steps"] == train[-1]["step"] == 6
        assert _close(row["test accuracy"], final["accuracy"]) and _close(row["test loss"], final["loss"])
        seconds[row["run"]] = train_s = train[-1]["train_s"]
        assert _close(row["train s"], train_s)
        assert _close(row["time per epoch s"], train_s / 6 * facts["train_examples"] / facts["global_batch"])
        assert _close(row["images/s"], 6 * facts["global_batch"] / train_s)
        assert _close(row["speedup"], seconds["1 device"] / train_s)
        assert _close(row["scaling efficiency"], seconds["1 device"] / train_s / facts["devices"])
        assert _close(row["compile s"], facts["compile_s"])
        losses[row["run"]] = [r["loss"] for r in train]
        largest = max(abs(a - b) for a, b in zip(losses[row["run"]], losses["1 device"]))
        assert _close(row["max abs train loss diff vs 1 device"], largest)
        assert largest < 1e-4  # the same seed gives the same losses on every mesh
        assert _is_png(run / "curves.png")
    assert _is_png(out / "accuracy.png")


@pytest.fixture(scope="module")
def strategies(tmp_path_factory, cli_env):
    return _smoke("strategies", tmp_path_factory.mktemp("strategies"), cli_env)


def test_strategies_table_is_read_from_the_runs(strategies):
    out = strategies
    rows = {r["strategy"]: r for r in _table(out)}
    assert list(rows) == ["dp", "hybrid", "local_sgd"]
    assert [r["mesh"] for r in rows.values()] == ["data=4", "fsdp=2 model=2", "data=4"]
    for name, row in rows.items():
        run = out / "runs" / name
        records, report = _records(run), _json(run / "parallel_report.json")
        train = [r for r in records if r["split"] == "train"]
        memory = report["bytes_per_device"]
        assert _close(row["images/s"], statistics.median(r["images_per_s"] for r in train[1:]))
        assert _close(row["params+opt MiB/device"], (memory["params"] + memory["opt_state"]) / MIB)
        assert _close(row["temp MiB/device"], memory["temp"] / MIB)
        assert _close(row["total MiB/device"], memory["total"] / MIB)
        assert _close(row["final train loss"], train[-1]["loss"])
        assert _close(row["test accuracy"], [r for r in records if r["split"] == "eval"][-1]["accuracy"])
        assert _close(row["compile s"], _json(run / "run.json")["compile_s"])
        if name != "local_sgd":
            assert _close(row["collective MiB/step"], report["collective_bytes_per_step"]["total"] / MIB)
    # Local SGD (averaging every 2nd step) moves the mean of its two step variants' bytes, less than DP.
    variants = _json(out / "runs" / "local_sgd" / "parallel_report.json")["variants"]
    assert {v["share_of_steps"] for v in variants.values()} == {0.5}
    mean = sum(v["collective_bytes_per_step"]["total"] for v in variants.values()) / 2
    assert _close(rows["local_sgd"]["collective MiB/step"], mean / MIB)
    assert float(rows["local_sgd"]["collective MiB/step"]) < float(rows["dp"]["collective MiB/step"])
    # DP and the hybrid compute the same function; local SGD does not.
    assert float(rows["dp"]["final train loss"]) == pytest.approx(float(rows["hybrid"]["final train loss"]), abs=1e-3)
    assert _is_png(out / "strategies.png")


@pytest.fixture(scope="module")
def scaling(tmp_path_factory, cli_env):
    return _smoke("scaling", tmp_path_factory.mktemp("scaling"), cli_env)


def test_scaling_table_is_read_from_the_benchmarks(scaling):
    out = scaling
    raw = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    # 1 process at 16 and 32 images, 2 processes at 32: strong scaling's 2-process run is weak scaling's.
    runs = [(1, 16), (1, 32), (2, 32)]
    jaxdist = [r for r in raw if r["framework"] == "jaxdist"]
    peer = [r for r in raw if r["framework"] == "jax (hand-written)"]
    assert len(raw) == 6 and sorted((r["processes"], r["global_batch"]) for r in jaxdist) == runs
    assert sorted((r["processes"], r["global_batch"]) for r in peer) == runs
    for r in jaxdist:
        assert r["devices"] == r["processes"]  # one device per process
        assert r["extras"]["nan_guard"] and r["extras"]["grad_norm_metric"]  # the default path
    speed = {(r["framework"], r["processes"], r["global_batch"]): r["images_per_s"] for r in jaxdist}
    speed.update({(r["framework"], r["processes"], r["global_batch"]): r["examples_per_s"] for r in peer})
    rows = _table(out)
    layout = [("weak", "1", "16", "16"), ("weak", "2", "32", "16"), ("strong", "1", "32", "32"),
              ("strong", "2", "32", "16")]
    assert [(r["framework"], r["scaling"], r["processes"], r["global batch"], r["batch per process"])
            for r in rows] == [(f, *row) for f in ("jaxdist", "jax (hand-written)") for row in layout]
    for row in rows:
        base = speed[row["framework"], 1, 16 if row["scaling"] == "weak" else 32]
        ips = speed[row["framework"], int(row["processes"]), int(row["global batch"])]
        assert _close(row["images/s"], ips)
        assert _close(row["speedup"], ips / base) and _close(row["efficiency"], ips / base / int(row["processes"]))
    assert "PyTorch: not run" in (out / "results.md").read_text()
    assert _is_png(out / "scaling.png")
