"""CIFAR-10, ConvMixer-256/8 pipelined: its 8 blocks split into 2 stages of 4 (`mesh.stage=2`), the batch
streamed through them in 4 microbatches (GPipe), the remaining devices splitting the batch.

    python -m jaxdist.main --config=configs/cifar_pipeline.py --workdir=runs/cifar_pp --config.data.path=$HOME/data
    python -m jaxdist.main --config=configs/cifar_pipeline.py --workdir=runs/cifar_pp4 --config.mesh.stage=4 \
        --config.pipeline.microbatches=8

Idle bubble: (stage - 1) / (microbatches + stage - 1) = 20% here; more microbatches shrink it, at the
cost of smaller matmuls per stage (docs/parallelism.md, "Pipeline"). Same losses as `--config.mesh.stage=1`
(tests/test_pipeline.py), so the mesh can change between runs of one experiment.

Model: ConvMixer (Trockman & Kolter 2022) with width 256, depth 8, patch 2, kernel 5, LayerNorm in place
of BatchNorm (models/convmixer.py says why). Training: AdamW with warmup and cosine decay at batch 512 for
~25 epochs, in the spirit of the authors' short CIFAR-10 runs; jaxdist's accuracy with it is not measured
yet, so no figure is promised here.
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.stage = 2
    c.mesh.data = -1
    c.pipeline.microbatches = 4
    c.model.name = "convmixer"
    c.model.dim = 256
    c.model.depth = 8
    c.model.patch_size = 2
    c.model.kernel_size = 5
    c.data.name = "cifar10"
    c.data.augment = "crop_flip"
    c.batch_size = 512
    c.total_steps = 2_500  # ~25 epochs of 50k
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.005
    c.optimizer.weight_decay = 0.01
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 250
    c.dtype = "bfloat16"
    return c
