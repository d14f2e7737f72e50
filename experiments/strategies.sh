#!/bin/bash
# shellcheck disable=SC2046  # $(mesh ...) is split into flags on purpose
# Every strategy on 8 simulated CPU devices: ResNet-20 and ConvMixer (width 64, 8 blocks) at CIFAR-10's
# shape (synthetic data), batch 128, under DP, FSDP, TP, hybrid, spatial and (ConvMixer) pipeline. One JSON
# line per run from jaxdist.bench: images/s, step time, compile time, memory and collective bytes by
# kind and mesh axes (docs/benchmarks.md, "Strategies"):
#   bash experiments/strategies.sh > strategies.jsonl
set -u
STEPS=${STEPS:-5}
C="--config=configs/cifar_dp.py --config.cpu_devices=8 --config.batch_size=128 --steps=$STEPS --warmup=2
   --config.model.dim=64 --config.model.depth=8 --config.model.kernel_size=5 --config.pipeline.microbatches=4"
mesh() {  # stage data fsdp spatial model
  echo "--config.mesh.stage=$1 --config.mesh.data=$2 --config.mesh.fsdp=$3 --config.mesh.spatial=$4 --config.mesh.model=$5"
}
tag() { python -c "import json,sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in sys.stdin if l.startswith('{')]" "$1"; }
for model in resnet20 convmixer; do
  python -m jaxdist.bench $C --config.model.name=$model $(mesh 1 8 1 1 1) 2>/dev/null | tag "$model dp"
  python -m jaxdist.bench $C --config.model.name=$model $(mesh 1 1 8 1 1) 2>/dev/null | tag "$model fsdp"
  python -m jaxdist.bench $C --config.model.name=$model $(mesh 1 4 1 1 2) 2>/dev/null | tag "$model tp"
  python -m jaxdist.bench $C --config.model.name=$model $(mesh 1 2 2 1 2) 2>/dev/null | tag "$model hybrid"
  python -m jaxdist.bench $C --config.model.name=$model $(mesh 1 2 1 4 1) 2>/dev/null | tag "$model spatial"
  if [ "$model" = convmixer ]; then
    python -m jaxdist.bench $C --config.model.name=$model $(mesh 2 4 1 1 1) 2>/dev/null | tag "$model pipeline2"
    python -m jaxdist.bench $C --config.model.name=$model $(mesh 4 2 1 1 1) 2>/dev/null | tag "$model pipeline4"
  fi
done
