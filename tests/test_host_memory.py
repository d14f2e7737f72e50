"""jaxdist/host_memory.py: with JAXDIST_MALLOC=reuse a CPU step reuses its freed host memory instead of
faulting it in again."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(cli_env, args: list[str], **env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**cli_env, **env}.items() if v is not None}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _bench(cli_env, **env) -> dict:
    """The LSTM step of configs/seqmnist_lstm.py on one device: 87 MB of temporaries per step."""
    result = _run(cli_env, ["-m", "jaxdist.bench", "--config=configs/seqmnist_lstm.py", "--config.cpu_devices=1",
                            "--config.mesh.data=1", "--steps=8", "--warmup=10", "--repeats=1"], **env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_one_device_step_reuses_its_freed_temporaries(cli_env):
    reused, default = _bench(cli_env, JAXDIST_MALLOC="reuse"), _bench(cli_env, JAXDIST_MALLOC=None)
    assert reused["host_memory_reuse"] is True and default["host_memory_reuse"] is False
    pages = reused["temp_bytes_per_device"] / 4096
    # glibc's defaults: every step faults its temporaries in again. Reused, most steps fault nothing; under
    # load a step or two of 8 still got fresh pages (the heap settles in a few steps), so: under half.
    assert default["host_page_faults_per_step"] > 0.9 * pages, default["host_page_faults_per_step"]
    assert reused["host_page_faults_per_step"] < 0.5 * pages, reused["host_page_faults_per_step"]


CHILD = "from jaxdist import host_memory; print(host_memory.configure(), host_memory.configure())"


@pytest.mark.parametrize("setting,applied", [(None, False), ("", False), ("default", False), ("reuse", True)])
def test_only_reuse_changes_glibcs_settings(cli_env, setting, applied):
    assert _run(cli_env, ["-c", CHILD], JAXDIST_MALLOC=setting).stdout.split() == [str(applied)] * 2


def test_an_unknown_setting_is_one_line_exit_2(cli_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdist.main", "--config=configs/digits_dp.py",
                             f"--workdir={tmp_path / 'run'}"], cwd=REPO, env={**cli_env, "JAXDIST_MALLOC": "jemalloc"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "jaxdist: error: JAXDIST_MALLOC='jemalloc' is not a setting; valid: 'default' (glibc's own malloc "
        "settings) or 'reuse' (keep the memory a step frees for the next one)")
    assert not (tmp_path / "run").exists()
