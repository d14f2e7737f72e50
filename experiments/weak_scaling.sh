#!/bin/bash
# Weak scaling on one machine: 1 process on 1 core vs 2 processes on 1 core each (pinned), 128 images per
# process per step, the seeds' CNN on 32x32x3, bare step (the peer scripts' optimizer, no metrics extras);
# PyTorch DDP (gloo) and the hand-written JAX loop beside it. One JSON line per run on stdout:
#   bash experiments/weak_scaling.sh [ROUNDS] > weak.jsonl      (docs/benchmarks.md section 4)
set -u
ROUNDS=${1:-2}
P=${PEERS:-experiments/peers}  # the peer reference scripts (experiments/peers/README.md)
C="--config=configs/cifar_dp.py --config.model.name=cnn --config.mesh.data=-1 --config.nan_policy=off
   --config.log_grad_norm=False --config.optimizer.name=momentum --config.optimizer.lr=0.01 --config.optimizer.weight_decay=5e-4
   --config.schedule.name=constant --config.schedule.warmup_steps=0 --steps=20"
tag() { python -c "import json,sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in sys.stdin if l.startswith('{')]" "$1"; }
for round in $(seq "$ROUNDS"); do
  taskset -c 0 python -m jaxdist.bench $C --config.cpu_devices=1 --config.batch_size=128 2>/dev/null | tag jaxdist_1proc
  python -m jaxdist.launch --nproc 2 --devices_per_proc 1 --pin --module jaxdist.bench -- $C --config.batch_size=256 \
    2>/dev/null | sed -n 's/^\[rank 0\] //p' | tag jaxdist_2proc
  taskset -c 0 python "$P/bench_torch.py" --model dcnn --batch 128 --threads 1 2>/dev/null | tag torch_1proc
  python "$P/bench_torch.py" --model dcnn --batch 128 --ddp 2 --pin 2>/dev/null | tag torch_ddp_2proc
  taskset -c 0 python "$P/bench_jax.py" --model dcnn --batch 128 2>/dev/null | tag jax_1proc
  python "$P/bench_jax.py" --model dcnn --batch 128 --processes 2 --pin 2>/dev/null | tag jax_2proc
done
