"""8 simulated CPU devices for every test, set before JAX starts its backends.

Compiled steps are shared across tests (and with the CLI subprocesses) through JAX's persistent
compilation cache: many tests compile the same step HLO, and on 2 cores compiling dominates.
"""
import os
import pathlib

import jax
import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(REPO / ".jax_cache")

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", CACHE)
# Every compile is cached, the small ones too (all_finite, init helpers, ...): a CLI run that finds its steps in
# the cache then takes ~5.0 s instead of ~5.9 s on the 2-core VM (docs/testing.md has the command).
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
flags.FLAGS.mark_as_parsed()  # library flags (Grain's workers read some) take their defaults, as under absl.app


# `python -m pytest -n 2` (the README's command) hands whole modules to two workers in collection order
# (--dist loadscope: module fixtures run once). The modules that take minutes go first, so the two workers
# finish together instead of one waiting while the other runs a long module last (docs/testing.md).
SLOWEST_MODULES = ("test_every_config.py", "test_experiments.py", "test_experiment_scripts.py", "test_prepare.py",
                   "test_multihost.py", "test_checkpoint.py", "test_sharding_invariance.py", "test_predict.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cli_env():
    """Environment for `python -m jaxdist...` subprocesses: same cache, no accelerators, no network."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE, "JAX_PLATFORMS": "cpu",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # `import jax` here set it; a user's shell has it unset
    return env
