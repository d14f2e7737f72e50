"""MNIST, ResNet-20, data-parallel: the seeds' single-device vs distributed comparison (ResNet on MNIST).

    python -m jaxdist.main --config=configs/mnist_resnet_dp.py --workdir=runs/mnist_dp
    python -m jaxdist.main --config=configs/mnist_resnet_dp.py --workdir=runs/mnist_1 --config.mesh.data=1 --config.cpu_devices=1

Needs tfds mnist prepared as array_record (tfds build mnist --file_format=array_record).
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "resnet20"
    c.data.name = "mnist"
    c.batch_size = 128
    c.total_steps = 3 * 60_000 // 128
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer.name = "momentum"
    c.optimizer.lr = 0.1
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 100
    return c
