"""The offline results the README and docs/rnn.md quote, rerun at full length from the shipped configs.

Real-size runs (~40 s each on 2 cores), so they are marked `slow` and the default `python -m pytest`
skips them; `python -m pytest -m slow` runs them (docs/testing.md). The shortened versions in the default
suite (tests/test_cli.py, tests/test_rnn.py) keep floors measured at their own length.
"""
import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow

# config -> documented test accuracy at the shipped length and seed 0 (README "Expected results", docs/rnn.md)
DOCUMENTED = {"configs/digits_dp.py": 0.9944, "configs/seqdigits_lstm.py": 0.986}


@pytest.mark.parametrize("config", DOCUMENTED)
def test_shipped_config_reproduces_its_documented_accuracy(config, cli_env, tmp_path):
    result = run_cli(cli_env, f"--config={config}", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["split"] == "eval"][-1]
    facts = json.loads((tmp_path / "run.json").read_text())
    assert final["step"] == facts["total_steps"] and final["examples"] == 360
    assert final["accuracy"] == pytest.approx(DOCUMENTED[config], abs=0.01), final
