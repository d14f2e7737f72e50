"""jaxdist/host_memory.py: the entry points restart once with glibc.malloc.hugetlb=1, so that a CPU step's
temporaries come in 2 MB pages instead of being faulted in 4 KB at a time every step."""
import json
import re
import subprocess
import sys

import pytest

from jaxdist import host_memory
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    host_memory._glibc_version() < (2, 35) or not host_memory._kernel_allows_huge_pages(),
    reason="needs glibc 2.35+ and transparent huge pages allowed by the kernel (madvise or always)")


def _run(cli_env, args: list[str], **env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**cli_env, **env}.items() if v is not None}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _bench(cli_env, **env) -> dict:
    """The LSTM step of configs/seqmnist_lstm.py on one device: 90 MB of temporaries per step."""
    result = _run(cli_env, ["-m", "jaxdist.bench", "--config=configs/seqmnist_lstm.py", "--config.cpu_devices=1",
                            "--config.mesh.data=1", "--steps=8", "--warmup=10", "--repeats=1"], **env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_by_default_a_step_does_not_fault_its_temporaries_in_page_by_page(cli_env):
    default, plain = _bench(cli_env, GLIBC_TUNABLES=None), _bench(cli_env, JAXDIST_MALLOC="glibc", GLIBC_TUNABLES=None)
    assert default["host_huge_pages"] is True and plain["host_huge_pages"] is False
    pages = default["temp_bytes_per_device"] / 4096
    # glibc's settings: every step maps its temporaries afresh and faults each 4 KB page. Huge pages: 2 MB
    # faults, a few dozen per step (measured 190 per step, with the rest of the step's host work).
    assert plain["host_page_faults_per_step"] > 0.9 * pages, plain["host_page_faults_per_step"]
    assert default["host_page_faults_per_step"] < 0.1 * pages, default["host_page_faults_per_step"]


CHILD = """if __name__ == "__main__":
    from jaxdist import host_memory
    host_memory.restart_with_huge_pages()
import os, sys
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
"""


@pytest.mark.parametrize("env,tunables,starts", [
    ({}, "glibc.malloc.hugetlb=1", 2),
    ({"JAXDIST_MALLOC": ""}, "glibc.malloc.hugetlb=1", 2),
    ({"JAXDIST_MALLOC": "hugepages"}, "glibc.malloc.hugetlb=1", 2),
    ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1", 2),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc.malloc.hugetlb=0", 1),  # the user's own choice
    ({"JAXDIST_MALLOC": "glibc"}, "None", 1),
    ({"JAXDIST_MALLOC": "jemalloc"}, "None", 1),  # refused later, by cli.join (the test below)
])
def test_the_restart_happens_once_and_keeps_the_command_and_the_users_tunables(cli_env, tmp_path, env, tunables,
                                                                               starts):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "sitecustomize.py").write_text(  # every interpreter start, exec'd or not, appends a line
        f"import os\nopen({str(tmp_path / 'starts')!r}, 'a').write(str(os.getpid()) + '\\n')\n")
    base = {k: v for k, v in cli_env.items() if k not in ("GLIBC_TUNABLES", "JAXDIST_MALLOC")}
    result = _run(base, [str(tmp_path / "child.py"), "a", "b c"],
                  **{**env, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    pid, *printed = result.stdout.strip().split(maxsplit=2)
    assert printed == [tunables, "['a', 'b c']"]
    assert (tmp_path / "starts").read_text().split() == [pid] * starts  # exec: the same process, restarted


@pytest.mark.parametrize("entry_point", ["main", "bench", "predict"])
def test_every_entry_point_restarts_before_it_imports_jax(cli_env, tmp_path, entry_point):
    base = {k: v for k, v in cli_env.items() if k not in ("GLIBC_TUNABLES", "JAXDIST_MALLOC")}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"jaxdist.{entry_point}", "--help"],
                            cwd=REPO, env=base, capture_output=True, text=True, timeout=120)
    # Each interpreter start prints its own import-time header: two starts, and JAX only in the second.
    _, first, second = result.stderr.split("import time: self [us]")
    imports_jax = re.compile(r"\|\s+jax(\.|$)", re.M)
    assert not imports_jax.search(first) and imports_jax.search(second)
    assert "jaxdist.host_memory" in first


def test_an_unknown_setting_is_one_line_exit_2(cli_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdist.main", "--config=configs/digits_dp.py",
                             f"--workdir={tmp_path / 'run'}"], cwd=REPO, env={**cli_env, "JAXDIST_MALLOC": "reuse"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "jaxdist: error: JAXDIST_MALLOC='reuse' is not a setting; valid: 'hugepages' (huge pages for what malloc "
        "maps, the default), 'glibc' (glibc's own malloc settings)")
    assert not (tmp_path / "run").exists()
