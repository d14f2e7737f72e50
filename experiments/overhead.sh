#!/bin/bash
# Framework overhead: jaxdist's bare step (the peer's optimizer: momentum 0.9, constant lr 0.01, decay 5e-4;
# no grad-norm metric, no NaN guard) against the hand-written JAX loop, same model (the seeds' CNN) and batch
# (128 x 32x32x3), A/B alternated. One JSON line per run:
#   bash experiments/overhead.sh [ROUNDS] > overhead.jsonl      (docs/benchmarks.md section 1)
set -u
ROUNDS=${1:-3}
P=${PEERS:-experiments/peers}  # the peer reference scripts (experiments/peers/README.md)
C="--config=configs/cifar_dp.py --config.model.name=cnn --config.nan_policy=off --config.log_grad_norm=False
   --config.optimizer.name=momentum --config.optimizer.lr=0.01 --config.optimizer.weight_decay=5e-4 --config.schedule.name=constant
   --config.schedule.warmup_steps=0"
tag() { python -c "import json,sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in sys.stdin if l.startswith('{')]" "$1"; }
for round in $(seq "$ROUNDS"); do
  python -m jaxdist.bench $C 2>/dev/null | tag jaxdist_8dev
  python "$P/bench_jax.py" --model dcnn --devices 8 2>/dev/null | tag jax_8dev
  python -m jaxdist.bench $C --config.cpu_devices=1 --config.mesh.data=1 2>/dev/null | tag jaxdist_1dev
  python "$P/bench_jax.py" --model dcnn 2>/dev/null | tag jax_1dev
done
