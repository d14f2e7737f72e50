"""Orbax checkpoints of the train state and the config that produced it.

Restoring passes abstract arrays that carry the *current* shardings, so each array lands directly in
the current mesh's layout, whatever mesh wrote it.
"""
import json
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, keep: int):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: dict, config, data_state: dict) -> None:
        """Starts an async save; training goes on while it writes.

        `data_state` is the train iterator's position (pipeline.TrainIterator.state), the same on every
        process, so one JSON item serves any process count.
        """
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json())),
            data=ocp.args.JsonSave(data_state)))

    def restore(self, step: int, abstract_state: dict, shardings: dict) -> tuple[dict, dict]:
        """(train state in the current shardings, data iterator state)."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
