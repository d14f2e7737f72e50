"""Does XLA:CPU spread a matmul inside a while loop over the cores? The LSTM's recurrent matmul, 28 steps
of (128, 128) @ (128, 512) in a lax.scan, against the same loop at twice the batch, a loop with two
independent such matmuls per step, and the same work as one (3584, 128) @ (128, 512) matmul, each timed
with every core of the machine and again pinned to one core. docs/rnn.md ("Where the 1-device time goes") reads the result: at the LSTM's size the in-loop
matmul takes as long on one core as on two.

    python experiments/loop_matmul_threads.py            # one JSON line per (cores, shape)
    python experiments/loop_matmul_threads.py --smoke    # the same, 2 timed runs each instead of 20 (tests)
"""
import json
import os
import subprocess
import sys
import time

STEPS, BATCH, HIDDEN, GATES = 28, 128, 128, 512


def measure(repeats: int = 20):
    import jax
    import jax.numpy as jnp

    def timed(f, *args):
        compiled = jax.jit(f).lower(*args).compile()
        for _ in range(min(3, repeats)):
            jax.block_until_ready(compiled(*args))
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(compiled(*args))
        return (time.perf_counter() - start) / repeats * 1e3

    w = jax.random.normal(jax.random.key(0), (HIDDEN, GATES)) * 0.05

    def loop(h, w):  # each step's matmul needs the previous step's result, as the LSTM's does
        return jax.lax.scan(lambda h, _: ((h @ w)[:, :HIDDEN] * 0.1, None), h, None, length=STEPS)[0]

    def two_layers(h, w):  # two independent matmuls per step, as two layers run as a wavefront would have
        def step(h, _):
            return tuple((x @ v)[:, :HIDDEN] * 0.1 for x, v in zip(h, (w, w[::-1]))), None
        return jax.lax.scan(step, (h, h + 1), None, length=STEPS)[0]

    cores = len(os.sched_getaffinity(0))
    for name, f, x in (("in_loop_28x(128x128x512)", loop, jnp.ones((BATCH, HIDDEN))),
                       ("in_loop_28x(256x128x512)", loop, jnp.ones((2 * BATCH, HIDDEN))),  # a batch twice as big
                       ("in_loop_28x2_independent(128x128x512)", two_layers, jnp.ones((BATCH, HIDDEN))),
                       ("one_matmul_(3584x128x512)", lambda x, w: x @ w, jnp.ones((STEPS * BATCH, HIDDEN)))):
        print(json.dumps({"cores": cores, "shape": name, "ms": round(timed(f, x, w), 2),
                          "jax": jax.__version__}), flush=True)


def main():
    smoke = "--smoke" in sys.argv[1:]
    if set(sys.argv[1:]) - {"--smoke", "--measure"}:
        sys.exit("usage: python experiments/loop_matmul_threads.py [--smoke]")
    if "--measure" in sys.argv[1:]:
        return measure(2 if smoke else 20)
    for cores in (sorted(os.sched_getaffinity(0)), [min(os.sched_getaffinity(0))]):
        subprocess.run([sys.executable, __file__, "--measure"] + ["--smoke"] * smoke, check=True,
                       preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))


if __name__ == "__main__":
    main()
