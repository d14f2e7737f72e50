"""train/window.py: the log point reads a window's metrics in chunks stacked on the device, not step by step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdist.parallel.mesh import build_mesh
from jaxdist.train import window
from jaxdist.train.window import NonFiniteError, TrainWindow


def _rows(n: int, bad=()) -> list[dict]:
    """n steps' metrics as the train step leaves them: scalars replicated over an 8-device mesh."""
    replicated = NamedSharding(build_mesh(dict(data=8)), P())
    return [{"loss": jax.device_put(jnp.float32(1.0 + k / 7), replicated),
             "accuracy": jax.device_put(jnp.float32(k % 3 / 3), replicated),
             "nonfinite": jax.device_put(jnp.int32(k in bad), replicated)} for k in range(n)]


@pytest.mark.parametrize("n", [1, window.CHUNK - 1, window.CHUNK, window.CHUNK + 1, 100])
def test_fetch_gives_every_steps_metrics_in_order(n):
    rows = _rows(n)
    fetched = window.fetch(rows)
    expected = jax.device_get(rows)
    assert set(fetched) == {"loss", "accuracy", "nonfinite"}
    for name, values in fetched.items():
        np.testing.assert_array_equal(values, [row[name] for row in expected])  # no padding row, none lost


def test_one_compiled_program_reads_windows_of_every_length():
    before = window._stack._cache_size()  # other tests' metrics (other names, devices) have programs of their own
    for n in (1, 5, window.CHUNK, 77):
        window.fetch([{**row, "only_in_this_test": row["loss"]} for row in _rows(n)])
    assert window._stack._cache_size() == before + 1  # a compile per window length: ~0.1-0.3 s each on CPU


def test_checked_steps_are_fetched_once_and_the_summary_sees_them_all():
    w = TrainWindow(batch_size=16, total_steps=100, nan_policy="skip")
    rows = _rows(40, bad={3, 35})
    for step, row in enumerate(rows[:20], 1):
        w.add(step, row)
    w.check_finite(None)  # a checkpoint point inside the window: steps 1-20 read, step 4 skipped
    for step, row in enumerate(rows[20:], 21):
        w.add(step, row)
    w.check_finite(None)  # steps 21-40 read; 36 skipped
    record, _ = w.summary(40)
    host = jax.device_get(rows)
    assert record["loss"] == pytest.approx(np.mean([r["loss"] for r in host]), rel=1e-6)
    assert record["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in host]), rel=1e-6)
    assert record["skipped_updates"] == 2 and w.skipped_total == 2


def test_stop_names_the_first_non_finite_step_after_those_already_checked():
    w = TrainWindow(batch_size=16, total_steps=100, nan_policy="stop")
    rows = _rows(30, bad={24, 26})
    for step, row in enumerate(rows[:10], 1):
        w.add(step, row)
    w.check_finite(4)
    for step, row in enumerate(rows[10:], 11):
        w.add(step, row)
    with pytest.raises(NonFiniteError, match=r"at step 25; .*latest checkpoint \(step 4\)"):
        w.check_finite(4)
