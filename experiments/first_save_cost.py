"""How long the first and second checkpoint saves of a run block the train loop, with jaxdist's replica-parallel floor
(jaxdist/train/checkpoint.py, REPLICA_PARALLEL_MIN_BYTES) and with Orbax's default (every replicated
array sliced across its replicas). docs/checkpoints.md quotes it.

    python experiments/first_save_cost.py --model=cnn        # one JSON line per handler
    python experiments/first_save_cost.py --model=resnet20

Each handler runs in a fresh process (a save compiles its slices once per process), on the seeds' digits
config at batch 16 and 8 simulated CPU devices, data-parallel (every array replicated 8 times).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time


def measure(model: str, handler: str) -> dict:
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import orbax.checkpoint as ocp

    from jaxdist.config import base_config
    from jaxdist.train import checkpoint, loop
    if handler == "orbax default":
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(), override=True)
    c = base_config()
    c.model.name, c.data.name, c.batch_size = model, "digits", 16
    state = jax.block_until_ready(loop.init_state(loop.build_experiment(c)))
    result = {"model": model, "handler": handler, "devices": jax.device_count()}
    with tempfile.TemporaryDirectory() as directory:
        for step, name in ((1, "first"), (2, "second")):
            with checkpoint.Checkpointer(directory, keep=3) as ckpt:  # closing waits for the background write
                start = time.perf_counter()
                ckpt.save(step, state, c, {"position": 0})
                result[f"{name}_save_blocking_s"] = round(time.perf_counter() - start, 3)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--handler", choices=["jaxdist", "orbax default"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.handler:
        print(json.dumps(measure(args.model, args.handler)), flush=True)
        return
    for handler in ("orbax default", "jaxdist"):
        subprocess.run([sys.executable, __file__, f"--model={args.model}", f"--handler={handler}"], check=True)


if __name__ == "__main__":
    main()
