"""Does a lax.cond in a step make the host wait for the device? (docs/performance.md, "Where the default
step's extra time goes on a GPU").

jaxdist's NaN guard gated the update with a lax.cond on a device-computed flag on every backend (on the CPU
it still does; parallel/sync.py, `_update_if`). If the backend reads that flag on the host to pick the branch,
every step blocks the host until the device has computed it, and the host can no longer queue steps ahead:
what a host-bound step at small batch would show. This times K donated steps of one small program in three
forms (the update gated by a lax.cond, selected by jnp.where, and ungated), as the host sees them:
  - dispatch_ms: from the first call until the K-th returns (the host's queueing);
  - total_ms: until the last result is ready.
A backend that runs steps asynchronously has dispatch_ms well below total_ms; one that syncs on the
predicate has them nearly equal. One JSON line per form and round.

    python experiments/cond_dispatch.py                 # defaults: 1024 x 1024 matmuls, K=200, 3 rounds
    python experiments/cond_dispatch.py --size=64 --steps=5 --rounds=1   # tiny (tests)
"""
import argparse
import json
import time
from functools import partial

import jax
import jax.numpy as jnp


def _step(form, state, x):
    def update(s):
        return jnp.tanh(s @ x) * 0.5 + s * 0.5  # a matmul: device time the host could overlap

    new = update(state) if form != "cond" else None
    finite = jnp.isfinite(state).all()
    if form == "cond":
        return jax.lax.cond(finite, update, lambda s: s, state)
    if form == "select":
        return jnp.where(finite, new, state)
    return new


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    x = jax.random.normal(jax.random.key(0), (args.size, args.size)) / args.size**0.5
    for round_ in range(1, args.rounds + 1):
        for form in ("cond", "select", "ungated"):
            step = jax.jit(partial(_step, form), donate_argnums=0)
            state = step(jnp.ones((args.size, args.size)), x)  # compile and warm up
            state.block_until_ready()
            start = time.perf_counter()
            for _ in range(args.steps):
                state = step(state, x)
            dispatched = time.perf_counter()
            state.block_until_ready()
            done = time.perf_counter()
            print(json.dumps({"form": form, "round": round_, "size": args.size, "steps": args.steps,
                              "dispatch_ms": round((dispatched - start) * 1e3, 3),
                              "total_ms": round((done - start) * 1e3, 3),
                              "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                              "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
    main()
