"""CIFAR-10, ResNet-20, data-parallel: the batch split over every device, params replicated.

    python -m jaxdist.main --config=configs/cifar_dp.py --workdir=runs/cifar_dp
    python -m jaxdist.main --config=configs/cifar_dp.py --workdir=runs/tp --config.mesh.model=2   # DP x TP

Needs tfds cifar10 prepared as array_record (tfds build cifar10 --file_format=array_record).
`--config.model.name=cnn` swaps in the seeds' CNN. Real-size: ~64k steps-to-92% schedule shortened
to 30 epochs here; on CPUs expect hours, on one GPU minutes.
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "resnet20"
    c.data.name = "cifar10"
    c.data.augment = "crop_flip"  # pad 4 + random 32x32 crop + horizontal flip
    c.batch_size = 128
    c.total_steps = 30 * 50_000 // 128
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.optimizer.name = "nesterov"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 200
    return c
