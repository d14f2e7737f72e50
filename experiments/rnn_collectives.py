"""The collectives one run of the 2-layer LSTM train step executes, per mesh, for T = 8 and T = 16 time
steps (those inside the time loops counted once per trip): what docs/rnn.md's "Sharding" table reads.
The model is tests/test_rnn_steps.py's (hidden 16, batch 16, fused gates) and so is the counting.

    PYTHONPATH=. python experiments/rnn_collectives.py           # data=8, data=4 x model=2, fsdp=8
    PYTHONPATH=. python experiments/rnn_collectives.py --smoke   # data=8 only (tests)

One JSON line per mesh: {kind: count} at each length, and the collectives each added time step adds.
"""
import argparse
import json

import jax

jax.config.update("jax_num_cpu_devices", 8)

from tests.test_rnn_steps import collectives_per_run, lstm_step_hlo  # noqa: E402

MESHES = [dict(data=8), dict(data=4, model=2), dict(fsdp=8)]
LENGTHS = (8, 16)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="data=8 only")
    args = p.parse_args()
    for mesh in MESHES[:1] if args.smoke else MESHES:
        counts = {t: dict(collectives_per_run(lstm_step_hlo(t, mesh))) for t in LENGTHS}
        added = (sum(counts[LENGTHS[1]].values()) - sum(counts[LENGTHS[0]].values())) / (LENGTHS[1] - LENGTHS[0])
        print(json.dumps({"mesh": mesh, **{f"T={t}": c for t, c in counts.items()}, "per_time_step": added}),
              flush=True)


if __name__ == "__main__":
    main()
