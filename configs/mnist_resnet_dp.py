"""MNIST, ResNet-20, data-parallel: the seeds' single-device vs distributed comparison (ResNet on MNIST).

    python -m jaxdist.main --config=configs/mnist_resnet_dp.py --workdir=runs/mnist_dp --config.data.path=$HOME/data
    python -m jaxdist.main --config=configs/mnist_resnet_dp.py --workdir=runs/mnist_1 --config.data.path=$HOME/data \
        --config.mesh.data=1 --config.cpu_devices=1

data.path: the four IDX files (.gz or not), torchvision's MNIST/raw, or Keras' mnist.npz; without it, tfds'
mnist prepared once (python -m jaxdist.data.prepare mnist). docs/data.md.

Expected at full length, 1,406 steps of 128 images (3 epochs): above 99.05%, the published test accuracy
of LeNet-5 without distortions (LeCun et al. 1998, "Gradient-Based Learning Applied to Document
Recognition": 0.95% error), the classic CNN a ResNet must beat. jaxdist's own figure is not measured
yet (README, "Expected results").
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
