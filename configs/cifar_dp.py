"""CIFAR-10, ResNet-20, data-parallel (the batch split over every device, params replicated), trained with
the recipe of He et al. 2016, so the result can be judged against the published figure.

    python -m jaxdist.main --config=configs/cifar_dp.py --workdir=runs/cifar --config.data.path=$HOME/data
    python -m jaxdist.main --config=configs/cifar_dp.py --workdir=runs/cifar_tp --config.mesh.model=2   # DP x TP

data.path: the raw download as torchvision or Keras leave it (cifar-10-batches-py/ or the .tar.gz in it);
without it, tfds' cifar10 prepared once (python -m jaxdist.data.prepare cifar10). docs/data.md.

Expected at full length, 64,000 steps of 128 images (164 epochs): 91.25% test accuracy, the published
ResNet-20 result (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 6: 8.75% error).
Their recipe, kept here: SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k steps,
4-pixel pad + random crop + flip. Differences: they picked the schedule on a 45k/5k split, this trains on
all 50k; jaxdist does not decay biases and BatchNorm scales. jaxdist's own full-length figure is not
measured yet (README, "Expected results"). `--config.model.name=resnet56`: published 93.03%.
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
    c.total_steps = 64_000
    c.log_every = 100
    c.eval_every = 2000
    c.checkpoint_every = 2000
    c.optimizer.name = "momentum"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.decay_steps_fraction = (0.5, 0.75)  # 32k and 48k
    c.schedule.decay_factor = 0.1
    c.schedule.warmup_steps = 0
    return c
