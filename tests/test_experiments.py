"""The experiment scripts end to end in their --smoke modes: each writes its table and plot, and every
number in the table is recomputed here from the files the runs wrote (metrics.jsonl, run.json,
parallel_report.json, raw.jsonl), so a table that misreads or misquotes them fails. The same checks
run on the committed results under experiments/results/, which docs/benchmarks.md quotes."""
import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

MIB = 2**20
COMMITTED = REPO / "experiments" / "results"


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


def check_single_vs_distributed(out, devices: int) -> dict[str, float]:
    """Every number of the table against the runs' files; returns each run's largest loss difference."""
    rows = _table(out)
    assert [r["run"] for r in rows] == ["1 device", f"{devices} devices DP", f"{devices} devices hybrid"]
    assert [r["mesh"] for r in rows] == ["-", f"data={devices}",
                                         " ".join(([f"data={devices // 4}"] if devices > 4 else []) + ["fsdp=2 model=2"])]
    seconds, losses, drift = {}, {}, {}
    for row in rows:
        run = out / "runs" / row["run"].replace(" ", "_")
        records, facts = _records(run), _json(run / "run.json")
        train = [r for r in records if r["split"] == "train"]
        final = [r for r in records if r["split"] == "eval"][-1]
        steps = facts["total_steps"]
        assert int(row["devices"]) == facts["devices"] == (1 if row["run"] == "1 device" else devices)
        assert int(row["steps"]) == steps == train[-1]["step"]
        assert _close(row["test accuracy"], final["accuracy"]) and _close(row["test loss"], final["loss"])
        seconds[row["run"]] = train_s = train[-1]["train_s"]
        assert _close(row["train s"], train_s)
        assert _close(row["time per epoch s"], train_s / steps * facts["train_examples"] / facts["global_batch"])
        assert _close(row["images/s"], steps * facts["global_batch"] / train_s)
        assert _close(row["speedup"], seconds["1 device"] / train_s)
        assert _close(row["scaling efficiency"], seconds["1 device"] / train_s / facts["devices"])
        assert _close(row["compile s"], facts["compile_s"])
        losses[row["run"]] = [r["loss"] for r in train]
        drift[row["run"]] = max(abs(a - b) for a, b in zip(losses[row["run"]], losses["1 device"]))
        assert _close(row["max abs train loss diff vs 1 device"], drift[row["run"]])
        assert _is_png(run / "curves.png")
    assert _is_png(out / "accuracy.png")
    return drift


def test_single_vs_distributed_smoke(single_vs_distributed):
    drift = check_single_vs_distributed(single_vs_distributed, devices=4)
    assert max(drift.values()) < 1e-4  # 6 small steps: the same seed gives the same losses on every mesh


def test_single_vs_distributed_committed():
    check_single_vs_distributed(COMMITTED / "single_vs_distributed", devices=8)


@pytest.fixture(scope="module")
def strategies(tmp_path_factory, cli_env):
    return _smoke("strategies", tmp_path_factory.mktemp("strategies"), cli_env)


def check_strategies(out, devices: int) -> dict[str, dict]:
    """Every number of the table against the runs' files; returns the rows by strategy."""
    rows = {r["strategy"]: r for r in _table(out)}
    meshes = {"dp": f"data={devices}", "fsdp": f"fsdp={devices}", "tp": f"data={devices // 2} model=2",
              "hybrid": " ".join(([f"data={devices // 4}"] if devices > 4 else []) + ["fsdp=2 model=2"]),
              "spatial": " ".join(([f"data={devices // 4}"] if devices > 4 else []) + ["spatial=4"]),
              "pipeline": f"stage=2 data={devices // 2}", "local_sgd": f"data={devices}"}
    for name, row in rows.items():
        run = out / "runs" / name
        records, report = _records(run), _json(run / "parallel_report.json")
        train = [r for r in records if r["split"] == "train"]
        memory = report["bytes_per_device"]
        assert row["mesh"] == meshes[name]
        assert _close(row["images/s"], statistics.median(r["images_per_s"] for r in train[1:]))
        assert _close(row["params+opt MiB/device"], (memory["params"] + memory["opt_state"]) / MIB)
        assert _close(row["temp MiB/device"], memory["temp"] / MIB)
        assert _close(row["total MiB/device"], memory["total"] / MIB)
        assert _close(row["final train loss"], train[-1]["loss"])
        assert _close(row["test accuracy"], [r for r in records if r["split"] == "eval"][-1]["accuracy"])
        assert _close(row["compile s"], _json(run / "run.json")["compile_s"])
        variants = report.get("variants")
        moved = (sum(v["share_of_steps"] * v["collective_bytes_per_step"]["total"] for v in variants.values())
                 if variants else report["collective_bytes_per_step"]["total"])
        assert _close(row["collective MiB/step"], moved / MIB)
        assert bool(variants) == (name == "local_sgd")
    assert _is_png(out / "strategies.png")
    return rows


def test_strategies_smoke(strategies):
    rows = check_strategies(strategies, devices=4)
    assert list(rows) == ["dp", "hybrid", "local_sgd"]
    # Local SGD averaging every 2nd step: half its steps communicate, so it moves less than DP.
    variants = _json(strategies / "runs" / "local_sgd" / "parallel_report.json")["variants"]
    assert {v["share_of_steps"] for v in variants.values()} == {0.5}
    assert float(rows["local_sgd"]["collective MiB/step"]) < float(rows["dp"]["collective MiB/step"])
    # DP and the hybrid compute the same function; local SGD does not.
    assert float(rows["dp"]["final train loss"]) == pytest.approx(float(rows["hybrid"]["final train loss"]), abs=1e-3)


def test_strategies_committed():
    rows = check_strategies(COMMITTED / "strategies", devices=8)
    assert list(rows) == ["dp", "fsdp", "tp", "hybrid", "spatial", "pipeline", "local_sgd"]


@pytest.fixture(scope="module")
def scaling(tmp_path_factory, cli_env):
    return _smoke("scaling", tmp_path_factory.mktemp("scaling"), cli_env)


def check_scaling(out, batch: int, frameworks: list[str], rounds: int):
    """Every number of the table against raw.jsonl: the best of the rounds of each benchmark, each
    process count against 1 process of the same mode (weak: `batch` per process; strong: 2 x `batch` in all)."""
    raw = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    # 1 process at B and 2B images, 2 processes at 2B: strong scaling's 2-process run is weak scaling's.
    runs = [(1, batch), (1, 2 * batch), (2, 2 * batch)]
    best = {}
    for framework in frameworks:
        mine = [r for r in raw if r["framework"] == framework]
        assert sorted((r["processes"], r["global_batch"]) for r in mine) == sorted(runs * rounds)
        for r in mine:
            rate = r["images_per_s"] if framework == "jaxdist" else r["examples_per_s"]
            key = framework, r["processes"], r["global_batch"]
            best[key] = max(best.get(key, 0.0), rate)
            if framework == "jaxdist":
                assert r["devices"] == r["processes"]  # one device per process
                assert r["extras"]["nan_guard"] and r["extras"]["grad_norm_metric"]  # the default path
    rows = _table(out)
    layout = [("weak", 1, batch), ("weak", 2, 2 * batch), ("strong", 1, 2 * batch), ("strong", 2, 2 * batch)]
    assert [(r["framework"], r["scaling"], int(r["processes"]), int(r["global batch"]), int(r["batch per process"]))
            for r in rows] == [(f, mode, p, g, g // p) for f in frameworks for mode, p, g in layout]
    for row in rows:
        base = best[row["framework"], 1, batch if row["scaling"] == "weak" else 2 * batch]
        ips = best[row["framework"], int(row["processes"]), int(row["global batch"])]
        assert _close(row["images/s"], ips)
        assert _close(row["speedup"], ips / base) and _close(row["efficiency"], ips / base / int(row["processes"]))
    assert _is_png(out / "scaling.png")


def test_scaling_smoke(scaling):
    check_scaling(scaling, batch=16, frameworks=["jaxdist", "jax (hand-written)"], rounds=1)
    raw = [json.loads(line) for line in (scaling / "raw.jsonl").read_text().splitlines()]
    # One core per process: taskset for 1 process, `jaxdist.launch --pin` (rank 0 on core 0) for 2.
    assert {tuple(r["cpu_affinity"]) for r in raw if r["framework"] == "jaxdist"} == {(0,)}
    assert "PyTorch: not run" in (scaling / "results.md").read_text()


def test_scaling_committed():
    check_scaling(COMMITTED / "scaling", batch=128, frameworks=["jaxdist", "jax (hand-written)", "torch"], rounds=2)
