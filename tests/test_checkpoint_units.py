"""train/checkpoint.py in-process, on one-array states saved through the Checkpointer (no model compiled):
the messages of each refusal, what is compared before a restore, where init_from finds a checkpoint, and the
small helpers. tests/test_checkpoint.py and test_checkpoint_faults.py run the same code through the loop."""
import json
import logging as std_logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from jaxdist.config import base_config
from jaxdist.errors import CheckpointWriteError, ConfigError
from jaxdist.train import checkpoint
from jaxdist.train.preemption import Preempted



def _sharding():
    """Made in the test, not at import: mutmut forks each mutant from a process that has imported the tests,
    and one that has started JAX's backend cannot fork safely."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(n=8, head=3):
    return {"step": jnp.int32(0),
            "params": {"conv": {"kernel": jnp.arange(n * 2.0).reshape(n, 2)}, "head": {"bias": jnp.ones((head,))}},
            "batch_stats": {"bn": {"mean": jnp.zeros((2,))}},
            "opt_state": ({"mu": jnp.zeros((4,))}, {"nu": jnp.zeros((5, 5))})}


def _abstract(state):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


def _save(directory, steps=(1,), state=None, config=None, keep=3, data=None):
    state = _state() if state is None else state
    with checkpoint.Checkpointer(str(directory), keep) as ckpt:
        for step in steps:
            ckpt.save(step, state, config or base_config(), data or {"next_batch": step})
            ckpt.check_saves()
    return state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    config = base_config()
    config.model.name = "resnet8"
    state = _save(directory, steps=(2, 4), config=config)
    return directory, state, config


def test_save_restore_round_trip_with_the_data_state(saved):
    directory, state, config = saved
    ckpt = checkpoint.Checkpointer(str(directory), 3, read_only=True)
    assert ckpt.latest_step() == 4 and ckpt.all_steps() == [2, 4] and ckpt.best_step() is None
    other = jax.sharding.SingleDeviceSharding(jax.devices()[3])  # saved from device 0: lands where asked
    restored, data = ckpt.restore(2, _abstract(state), jax.tree.map(lambda _: other, state))
    assert data == {"next_batch": 2}
    np.testing.assert_array_equal(restored["params"]["conv"]["kernel"], state["params"]["conv"]["kernel"])
    assert all(a.sharding == other for a in jax.tree.leaves(restored))
    assert ckpt.saved_config(4)["model"]["name"] == "resnet8"
    assert sorted(ckpt._verified) == [2, 4]  # each verified when first read


def test_array_shapes_name_params_and_stats_by_path_and_the_optimizer_by_position(saved):
    directory, _, _ = saved
    shapes = checkpoint.Checkpointer(str(directory), 3, read_only=True).array_shapes(4)
    assert shapes == {"params/conv/kernel": (8, 2), "params/head/bias": (3,), "batch_stats/bn/mean": (2,),
                      "opt_state/0": (4,), "opt_state/1": (5, 5)}


def test_check_compatible_names_the_changed_fields_then_the_arrays(saved):
    directory, state, config = saved
    ckpt = checkpoint.Checkpointer(str(directory), 3, read_only=True)
    ckpt.check_compatible(4, config, _abstract(state))  # the same: passes
    other = base_config()
    other.model.name, other.batch_size, other.data.view = "resnet8", 64, "rows"
    with pytest.raises(ConfigError) as e:
        ckpt.check_compatible(4, other, _abstract(state))
    assert str(e.value) == (f"{directory} was written by a different config (data.view 'image' -> 'rows'; batch_size "
                            f"128 -> 64); use a new --workdir, or --config.init_from={directory.parent} to start from "
                            "its weights")
    for field, value in [("model.num_classes", 3), ("model.pool", "mean"), ("model.bidirectional", True),
                         ("data.name", "synthetic"), ("data.ucr_name", "x"), ("data.image_size", 4),
                         ("optimizer.name", "adamw"), ("optimizer.grad_accum_steps", 2), ("seed", 1)]:
        changed = base_config()
        changed.model.name = "resnet8"
        section, _, leaf = field.rpartition(".")
        (changed[section] if section else changed)[leaf] = value
        with pytest.raises(ConfigError, match=f"different config \\({field} "):
            ckpt.check_compatible(4, changed, _abstract(state))
    seen = []
    ckpt.check_compatible(4, config, _abstract(state), explain=lambda c, shapes: seen.append((c["model"]["name"], shapes)))
    assert seen == [("resnet8", ckpt.array_shapes(4))]
    with pytest.raises(ConfigError, match="^strategy$"):  # the strategy's reason comes before the shapes
        ckpt.check_compatible(4, config, _abstract(_state(n=6)), explain=lambda *_: (_ for _ in ()).throw(
            ConfigError("strategy")))
    with pytest.raises(ConfigError) as e:
        ckpt.check_compatible(4, config, _abstract(_state(n=6, head=4)))
    assert str(e.value) == (f"checkpoint {directory}/4 does not fit this model: params/conv/kernel: checkpoint (8, 2) "
                            "vs model (6, 2); params/head/bias: checkpoint (3,) vs model (4,)")


def test_many_mismatches_are_cut_to_four():
    saved = {f"params/a{i}": (1,) for i in range(6)}
    abstract = {"params": {f"a{i}": jax.ShapeDtypeStruct((2,), jnp.float32) for i in range(6)}}
    assert len(checkpoint.shape_mismatches(saved, abstract)) == 6
    directory_free = checkpoint.shape_mismatches(saved, {"params": {f"a{i}": jax.ShapeDtypeStruct((1,), jnp.float32)
                                                                    for i in range(6)}})
    assert directory_free == []


def test_check_compatible_cuts_a_long_list_with_dots(tmp_path):
    state = {"params": {f"a{i}": jnp.zeros((1,)) for i in range(5)}}
    _save(tmp_path, state=state)
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3, read_only=True)
    bigger = {"params": {f"a{i}": jax.ShapeDtypeStruct((2,), jnp.float32) for i in range(5)}}
    with pytest.raises(ConfigError) as e:
        ckpt.check_compatible(1, base_config(), bigger)
    assert str(e.value).endswith("params/a3: checkpoint (1,) vs model (2,) ...")
    assert str(e.value).count("vs model") == 4
    four = {"params": {f"a{i}": jax.ShapeDtypeStruct((2 if i < 4 else 1,), jnp.float32) for i in range(5)}}
    with pytest.raises(ConfigError) as e:
        ckpt.check_compatible(1, base_config(), four)
    assert str(e.value).endswith("params/a3: checkpoint (1,) vs model (2,)")


def test_field_reads_dotted_names_and_missing_ones_as_none():
    config = {"model": {"name": "cnn", "empty": {}}, "seed": 0}
    assert checkpoint._field(config, "model.name") == "cnn"
    assert checkpoint._field(config, "seed") == 0
    assert checkpoint._field(config, "model.missing") is None
    assert checkpoint._field(config, "model.name.deeper") is None
    assert checkpoint._field(config, "model.empty") is None


def test_a_changed_file_and_unreadable_checksums_are_refused_naming_the_kept_steps(tmp_path):
    _save(tmp_path, steps=(1, 2))
    step_dir = tmp_path / "2"
    digests = json.loads((step_dir / checkpoint.CHECKSUMS).read_text())["sha256"]
    assert "state/_METADATA" in digests and checkpoint.CHECKSUMS not in digests
    assert not any(p.startswith(checkpoint.CHECKSUMS) for p in digests)
    path = step_dir / "data" / "metadata"
    path.write_text(path.read_text() + " ")
    with pytest.raises(ConfigError) as e:
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).saved_config(2)
    assert str(e.value) == (f"checkpoint {tmp_path}/2 cannot be read (data/metadata changed after it was saved: its "
                            f"sha256 differs from {checkpoint.CHECKSUMS}); nothing was deleted: move that directory "
                            "away to resume from an earlier step (kept: [1])")
    (step_dir / checkpoint.CHECKSUMS).write_text("{")
    with pytest.raises(ConfigError, match=rf"^checkpoint {tmp_path}/2 cannot be read \({checkpoint.CHECKSUMS}: "
                                          r"JSONDecodeError: .*\(kept: \[1\]\)$"):
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).array_shapes(2)
    (step_dir / checkpoint.CHECKSUMS).write_text(json.dumps({"sha256": {"gone": "0"}}))
    with pytest.raises(ConfigError, match=rf"^checkpoint {tmp_path}/2 cannot be read \(gone: FileNotFoundError: "):
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).array_shapes(2)
    (step_dir / checkpoint.CHECKSUMS).write_text(json.dumps({"md5": {}}))
    with pytest.raises(ConfigError, match=rf"\({checkpoint.CHECKSUMS}: KeyError: 'sha256'\)"):
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).array_shapes(2)
    (step_dir / checkpoint.CHECKSUMS).write_text(json.dumps({"sha256": {}}))  # nothing to compare
    checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).array_shapes(1)


def test_without_checksums_it_loads_and_warns_once(tmp_path, caplog):
    _save(tmp_path)
    (tmp_path / "1" / checkpoint.CHECKSUMS).unlink()
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3, read_only=True)
    expected = [f"checkpoint {tmp_path}/1 has no {checkpoint.CHECKSUMS} (saved before jaxdist wrote "
                "checksums, or the run ended right after saving it): loaded unverified"]
    with caplog.at_level(std_logging.WARNING):
        ckpt.array_shapes(1)
        assert [r.getMessage() for r in caplog.records if "loaded unverified" in r.getMessage()] == expected
        ckpt.saved_config(1)
    assert [r.getMessage() for r in caplog.records if "loaded unverified" in r.getMessage()] == expected


def test_a_missing_step_is_orbaxs_error_in_one_line(tmp_path):
    _save(tmp_path)
    with pytest.raises(ConfigError, match=rf"^checkpoint {tmp_path}/7 cannot be read \(\w+(Error|Exception): .*"
                                          r"\(kept: \[1\]\)$"):
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).saved_config(7)
    only = tmp_path / "only"
    _save(only)
    (only / "1" / checkpoint.CHECKSUMS).write_text("[]")
    with pytest.raises(ConfigError, match=rf"^checkpoint {only}/1 cannot be read \({checkpoint.CHECKSUMS}: TypeError: "
                                          r".*\(kept: none\)$"):
        checkpoint.Checkpointer(str(only), 3, read_only=True).array_shapes(1)


def test_a_save_that_cannot_start_is_a_checkpoint_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ok"), 3)
    ckpt.save(1, {"w": jnp.zeros(2)}, base_config(), {})
    ckpt.check_saves()
    ckpt._manager.wait_until_finished()
    ckpt.check_saves()
    assert (tmp_path / "ok" / "1" / checkpoint.CHECKSUMS).exists()
    ckpt.directory = str(blocker)  # the next step's directory cannot be created under a file
    ckpt._manager._directory = blocker
    with pytest.raises(CheckpointWriteError, match=r"^saving checkpoint .*file/2 failed \(\w+Error: .*\); the latest complete "
                                                   r"checkpoint is step 1; free space or fix the directory, then "
                                                   r"rerun to resume$"):
        ckpt.save(2, {"w": jnp.zeros(2)}, base_config(), {})
    ckpt.close()  # reports nothing more


def test_write_failed_before_any_complete_step(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    ckpt._step = 5
    error = ckpt._write_failed(OSError("disk\nfull"))
    assert str(error) == (f"saving checkpoint {tmp_path}/5 failed (OSError: disk); no checkpoint is complete yet; "
                          "free space or fix the directory, then rerun to resume")
    assert ckpt._failed
    ckpt.close()


def test_exit_keeps_the_error_already_on_its_way_out(tmp_path, caplog):
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    ckpt._finish_pending = lambda: (_ for _ in ()).throw(CheckpointWriteError("write failed"))
    with caplog.at_level(std_logging.WARNING):
        ckpt.__exit__(ValueError, ValueError("first"), None)  # logged, not raised
    assert [r.getMessage() for r in caplog.records if "write failed" in r.getMessage()] == ["write failed"]
    with pytest.raises(CheckpointWriteError):
        ckpt.__exit__(None, None, None)
    with pytest.raises(CheckpointWriteError):
        ckpt.__exit__(Preempted, None, None)
    assert ckpt.__enter__() is ckpt


def test_summary_is_the_type_and_the_first_line():
    assert checkpoint._summary(OSError("first\nsecond")) == "OSError: first"
    assert checkpoint._summary(ValueError("  padded  \n")) == "ValueError: padded"
    assert checkpoint._summary(KeyError()) == "KeyError: "
    assert checkpoint._summary(RuntimeError("x" * 300)) == "RuntimeError: " + "x" * 200


def test_files_lists_every_file_but_the_checksums(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/b/c", "a/d", "e", checkpoint.CHECKSUMS, checkpoint.CHECKSUMS + ".tmp"):
        (tmp_path / name).write_text(name)
    assert checkpoint._files(str(tmp_path)) == ["a/b/c", "a/d", "e"]
    import hashlib
    assert checkpoint._sha256(str(tmp_path / "e")) == hashlib.sha256(b"e").hexdigest()


def test_orbax_log_lines_lose_their_tracebacks_only():
    try:
        raise OSError("disk full\nmore")
    except OSError:
        import sys
        exc_info = sys.exc_info()
    orbax = std_logging.LogRecord("x", std_logging.ERROR, "/site-packages/orbax/checkpoint/x.py", 1, "save %s", ("3",),
                                  exc_info)
    assert checkpoint._NoOrbaxTracebacks().filter(orbax)
    assert orbax.getMessage() == "save 3 (OSError: disk full)" and orbax.exc_info is None and orbax.exc_text is None
    other = std_logging.LogRecord("x", std_logging.ERROR, "/site-packages/jaxdist/x.py", 1, "save %s", ("3",), exc_info)
    assert checkpoint._NoOrbaxTracebacks().filter(other) and other.exc_info is exc_info
    plain = std_logging.LogRecord("x", std_logging.ERROR, "/site-packages/orbax/x.py", 1, "m", (), None)
    assert checkpoint._NoOrbaxTracebacks().filter(plain) and plain.getMessage() == "m"
    assert any(isinstance(f, checkpoint._NoOrbaxTracebacks) for f in logging.get_absl_logger().filters)


def test_as_dict_and_named_shapes():
    class Mapping:
        def __init__(self, d):
            self.d = d

        def items(self):
            return self.d.items()

    tree = Mapping({"params": Mapping({"a": jax.ShapeDtypeStruct((2,), jnp.float32)}), "n": 3})
    plain = checkpoint._as_dict(tree)
    assert type(plain) is dict and type(plain["params"]) is dict and plain["n"] == 3
    shapes = checkpoint._named_shapes({"params": {"blocks": {0: {"k": jnp.zeros((2, 3))}}}, "batch_stats": None,
                                       "opt_state": (jnp.zeros(()), "not an array", {"x": jnp.zeros((4,))})})
    assert shapes == {"params/blocks/0/k": (2, 3), "opt_state/0": (), "opt_state/1": (4,)}
    assert checkpoint._named_shapes({}) == {}


def test_find_checkpoint_in_a_workdir_its_checkpoints_or_a_step(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    for name in ("2", "10", "tmp", "3.orbax-checkpoint-tmp"):
        (ckpts / name).mkdir(parents=True)
    assert checkpoint.find_checkpoint(str(tmp_path / "run")) == (str(ckpts), 10)
    assert checkpoint.find_checkpoint(str(ckpts)) == (str(ckpts), 10)
    assert checkpoint.find_checkpoint(str(ckpts / "2")) == (str(ckpts), 2)
    with pytest.raises(ConfigError) as e:
        checkpoint.find_checkpoint(str(ckpts / "tmp"))
    assert str(e.value) == (f"init_from={str(ckpts / 'tmp')!r} has no checkpoints; give a workdir, its checkpoints/ "
                            "directory or one step's directory inside it")
    (tmp_path / "7").write_text("")  # a file named like a step is not one
    with pytest.raises(ConfigError, match="has no checkpoints"):
        checkpoint.find_checkpoint(str(tmp_path / "7"))


def _init_from_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from")
            or "init_from " in r.getMessage()]


def test_load_weights_takes_matching_arrays_and_check_weights_reads_them(tmp_path, caplog):
    source = _state()
    source["params"]["extra"] = {"kernel": jnp.ones((2, 2))}
    source["params"]["more"] = {"kernel": jnp.ones((2, 2))}  # four params: the message names three
    _save(tmp_path / "run" / "checkpoints", steps=(3,), state=source)
    checkpoint.check_weights(str(tmp_path / "run"))
    target = jax.sharding.SingleDeviceSharding(jax.devices()[5])  # not where it was saved from
    fresh = jax.tree.map(lambda a: jax.device_put(jnp.full(a.shape, 7, a.dtype), target), _state(head=5))
    fresh["params"]["new"] = {"kernel": jax.device_put(jnp.zeros((3, 3)), target)}
    with caplog.at_level(std_logging.INFO):
        loaded = checkpoint.load_weights(str(tmp_path / "run"), fresh)
    np.testing.assert_array_equal(loaded["params"]["conv"]["kernel"], source["params"]["conv"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["bn"]["mean"], source["batch_stats"]["bn"]["mean"])
    np.testing.assert_array_equal(loaded["params"]["head"]["bias"], 7)  # reshaped: stays fresh
    assert "extra" not in loaded["params"]
    assert loaded["opt_state"] is fresh["opt_state"] and loaded["step"] is fresh["step"]
    assert all(a.sharding == target for a in jax.tree.leaves(loaded["params"]))  # this run's shardings
    assert _init_from_messages(caplog) == [
        f"init_from {tmp_path}/run/checkpoints/3: loaded 2 arrays; kept the fresh initialisation of "
        "params/head/bias (5,), params/new/kernel (3, 3)"]
    caplog.clear()
    same = jax.tree.map(lambda a: jax.device_put(a, target), _state())
    with caplog.at_level(std_logging.INFO):
        checkpoint.load_weights(str(tmp_path / "run"), same)
    assert _init_from_messages(caplog) == [f"init_from {tmp_path}/run/checkpoints/3: loaded 3 arrays"]
    unrelated = {"params": {"other": jnp.zeros((3,))}, "batch_stats": {"bn": {"mean": jnp.zeros((2,))}}}
    with pytest.raises(ConfigError) as e:
        checkpoint.load_weights(str(tmp_path / "run"), unrelated)
    assert str(e.value) == (f"init_from: checkpoint {tmp_path}/run/checkpoints/3 shares no parameter (name and shape) "
                            "with this model; its params are e.g. ['params/conv/kernel', 'params/extra/kernel', "
                            "'params/head/bias']")  # not params/more/kernel
    with pytest.raises(ConfigError, match="has no checkpoints"):
        checkpoint.check_weights(str(tmp_path / "nowhere"))


def test_load_weights_refuses_unreadable_arrays_in_one_line(tmp_path):
    """A truncated array file of a checkpoint saved without checksums: the metadata reads, the arrays do not."""
    directory = tmp_path / "run" / "checkpoints"
    _save(directory, steps=(2, 3))
    (directory / "3" / checkpoint.CHECKSUMS).unlink()
    for f in (directory / "3" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^checkpoint {directory}/3 cannot be read \(\w+(Error|Exception): .*; "
                                          r"nothing was deleted: .*\(kept: \[2\]\)$"):
        checkpoint.load_weights(str(tmp_path / "run"), _state())


def test_check_compatible_reads_the_config_of_the_step_asked_for(tmp_path):
    first, second = base_config(), base_config()
    second.seed = 5
    with checkpoint.Checkpointer(str(tmp_path), 3) as ckpt:
        ckpt.save(1, _state(), first, {})
        ckpt.save(2, _state(), second, {})
    with checkpoint.Checkpointer(str(tmp_path), 3, read_only=True) as ckpt:
        ckpt.check_compatible(1, first, _abstract(_state()))  # not the latest step's config
        ckpt.check_compatible(2, second, _abstract(_state()))
        with pytest.raises(ConfigError, match=r"\(seed 0 -> 5\)"):
            ckpt.check_compatible(1, second, _abstract(_state()))


def test_no_preemption_in_a_single_process(tmp_path):
    with checkpoint.Checkpointer(str(tmp_path), 1) as ckpt:
        assert ckpt.reached_preemption(3) is False


def test_unreadable_metadata_is_one_line_naming_the_step(tmp_path):
    _save(tmp_path, steps=(1, 2))
    (tmp_path / "2" / checkpoint.CHECKSUMS).unlink()
    (tmp_path / "2" / "state" / "_METADATA").write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^checkpoint {tmp_path}/2 cannot be read \(\w+(Error|Exception): .*"
                                          r"\(kept: \[1\]\)$"):
        checkpoint.Checkpointer(str(tmp_path), 3, read_only=True).array_shapes(2)


def test_check_saves_waits_for_nothing_while_a_save_runs(tmp_path):
    """check_saves runs every step: while Orbax still writes it returns at once; once the save is done it
    finishes it (checksums written). Orbax's 'in progress' flag is set by hand here, to hold that moment."""
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    ckpt.save(1, _state(), base_config(), {})
    ckpt._manager.wait_until_finished()
    ckpt._manager.is_saving_in_progress = lambda: True
    ckpt.check_saves()
    assert ckpt._unchecked and not (tmp_path / "1" / checkpoint.CHECKSUMS).exists()
    ckpt._manager.is_saving_in_progress = lambda: False
    ckpt.check_saves()
    assert not ckpt._unchecked and (tmp_path / "1" / checkpoint.CHECKSUMS).exists()
    assert ckpt._complete == 1
    ckpt.close()


def test_a_failed_background_write_is_reported_once_with_its_cause(tmp_path):
    """Orbax's wait for the save in flight raises (the disk filled up while it wrote): the next check_saves
    raises CheckpointWriteError naming the cause, and close() has nothing more to report."""
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    ckpt.save(1, _state(), base_config(), {})
    ckpt.check_saves()
    ckpt._manager.wait_until_finished()
    ckpt.check_saves()
    ckpt.save(2, _state(), base_config(), {})
    real_wait = ckpt._manager.wait_until_finished
    real_wait()

    def disk_full():
        raise OSError(28, "No space left on device")
    ckpt._manager.wait_until_finished = disk_full
    with pytest.raises(CheckpointWriteError) as e:
        ckpt.check_saves()
    assert str(e.value) == (f"saving checkpoint {tmp_path}/2 failed (OSError: [Errno 28] No space left on device); the "
                            "latest complete checkpoint is step 1; free space or fix the directory, then rerun to resume")
    ckpt.check_saves()  # reported once
    ckpt._manager.wait_until_finished = real_wait
    ckpt.close()


def test_closing_without_a_save_writes_nothing(tmp_path, caplog):
    with caplog.at_level(std_logging.WARNING):
        with checkpoint.Checkpointer(str(tmp_path), 3) as ckpt:
            ckpt.check_saves()
        assert ckpt._unchecked is False and ckpt._step is None
    assert not [r for r in caplog.records if "checksums" in r.getMessage()]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit() or p.name == "None") == []


def test_checksums_that_cannot_be_written_leave_a_warning(tmp_path, caplog):
    _save(tmp_path)
    (tmp_path / "1" / checkpoint.CHECKSUMS).unlink()
    (tmp_path / "1" / (checkpoint.CHECKSUMS + ".tmp")).mkdir()  # open() of the temporary file fails
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    with caplog.at_level(std_logging.WARNING):
        ckpt._write_checksums(1)
    messages = [r.getMessage() for r in caplog.records if "could not write checksums" in r.getMessage()]
    assert messages == [f"could not write checksums of checkpoint {tmp_path}/1 (IsADirectoryError: [Errno 21] Is a "
                        f"directory: '{tmp_path}/1/{checkpoint.CHECKSUMS}.tmp'); it will load unverified"]
    assert not (tmp_path / "1" / checkpoint.CHECKSUMS).exists()
    ckpt.close()


def _kept(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_retention_defaults_keep_the_latest_only(tmp_path):
    """No keep_best: the latest N, whatever the metrics say; keep_best without best_metric ranks by accuracy,
    and a checkpoint without metrics (not an eval step) is never kept as a best one."""
    metrics = {1: {"accuracy": 0.9, "loss": 0.1}, 2: {"accuracy": 0.1, "loss": 0.9}, 3: {"accuracy": 0.2, "loss": 0.8}}
    latest = tmp_path / "latest"
    with checkpoint.Checkpointer(str(latest), 2) as ckpt:
        for step, m in metrics.items():
            ckpt.save(step, {"w": jnp.zeros(2)}, base_config(), {}, metrics=m)
            ckpt.check_saves()
        assert ckpt.best_step() is None
    assert _kept(latest) == [2, 3]
    best = tmp_path / "best"
    with checkpoint.Checkpointer(str(best), 1, keep_best=1) as ckpt:
        for step, m in {**metrics, 4: None, 5: None}.items():
            ckpt.save(step, {"w": jnp.zeros(2)}, base_config(), {}, metrics=m)
            ckpt.check_saves()
        assert ckpt.best_step() == 1
    assert _kept(best) == [1, 5]


def test_close_reports_a_failing_orbax_close_unless_a_failure_was_reported(tmp_path):
    def failing_close():
        raise RuntimeError("metadata write\nfailed")

    ckpt = checkpoint.Checkpointer(str(tmp_path / "a"), 1)
    real_close = ckpt._manager.close
    ckpt._manager.close = failing_close
    with pytest.raises(CheckpointWriteError) as e:
        ckpt.close()
    assert str(e.value) == (f"saving checkpoint {tmp_path}/a/None failed (RuntimeError: metadata write); no checkpoint "
                            "is complete yet; free space or fix the directory, then rerun to resume")
    real_close()
    ckpt = checkpoint.Checkpointer(str(tmp_path / "b"), 1)
    real_close = ckpt._manager.close
    ckpt._manager.close = failing_close
    ckpt._failed = True  # a CheckpointWriteError was raised already: nothing more to say
    ckpt.close()
    real_close()


def test_a_writer_creates_its_directory_a_reader_does_not(tmp_path):
    with checkpoint.Checkpointer(str(tmp_path / "new"), 1):
        assert (tmp_path / "new").is_dir()
    checkpoint.Checkpointer(str(tmp_path / "missing"), 1, read_only=True).close()
    assert not (tmp_path / "missing").exists()


def test_a_reopened_run_knows_its_latest_complete_step(tmp_path):
    _save(tmp_path, steps=(1, 4))
    ckpt = checkpoint.Checkpointer(str(tmp_path), 3)
    ckpt._step = 8
    assert str(ckpt._write_failed(OSError("full"))) == (
        f"saving checkpoint {tmp_path}/8 failed (OSError: full); the latest complete checkpoint is step 4; free space "
        "or fix the directory, then rerun to resume")
    ckpt.close()


def test_metrics_are_written_only_to_rank_checkpoints(tmp_path):
    with checkpoint.Checkpointer(str(tmp_path), 2) as ckpt:
        ckpt.save(1, {"w": jnp.zeros(2)}, base_config(), {}, metrics={"accuracy": 0.5, "loss": 1.0})
    assert "metrics" not in {p.name for p in (tmp_path / "1").iterdir()}  # no keep_best: nothing ranks them
    best = tmp_path / "best"
    with checkpoint.Checkpointer(str(best), 2, keep_best=1) as ckpt:
        ckpt.save(1, {"w": jnp.zeros(2)}, base_config(), {}, metrics={"accuracy": 0.5, "loss": 1.0})
    assert "metrics" in {p.name for p in (best / "1").iterdir()}
