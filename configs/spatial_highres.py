"""Spatial parallelism for large images: ResNet-18 at 256x256, each image's rows split over 4 devices.

    python -m jaxdist.main --config=configs/spatial_highres.py --workdir=runs/highres

Synthetic images by default, so it runs anywhere; for your own images in DIR/<class>/*.jpg:
    --config.data.name=folder --config.data.path=DIR --config.model.num_classes=N

At this size one example's activations, not the weights, fill a device: splitting rows over `spatial`
divides them, where data parallelism would only divide the batch (docs/parallelism.md, "Spatial").
The rest of the devices (-1) split the batch. To watch it run on CPU (~1.5 min on 2 cores):
    --config.cpu_devices=8 --config.total_steps=2 --config.schedule.warmup_steps=0 --config.eval_every=2
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.mesh.spatial = 4
    c.mesh.data = -1
    c.model.name = "resnet18"  # ImageNet stem: 256 -> 64 rows after the stem, 16 per device
    c.data.name = "synthetic"
    c.data.synthetic_shape = (256, 256, 3)
    c.data.synthetic_examples = 512
    c.data.augment = "flip"
    c.batch_size = 32
    c.total_steps = 200
    c.log_every = 10
    c.eval_every = 100
    c.checkpoint_every = 100
    c.optimizer.name = "momentum"
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    c.dtype = "bfloat16"
    return c
