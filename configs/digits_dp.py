"""Offline default: the seeds' CNN on scikit-learn's bundled 8x8 digits, data-parallel over 8 devices.

    python -m jaxdist.main --config=configs/digits_dp.py --workdir=runs/digits

Needs no download. On 8 simulated CPU devices (2 cores) it reaches ~99% test accuracy in well
under a minute, compile included (README, "Expected results", has the measured runs).
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "cnn"
    c.data.name = "digits"
    c.data.augment = "crop"  # random shifts by up to 1 pixel; without them the CNN overfits at ~98%
    c.data.crop_padding = 1
    c.batch_size = 128
    c.total_steps = 600
    c.log_every = 100
    c.eval_every = 200
    c.checkpoint_every = 600
    c.optimizer.name = "momentum"
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 50
    return c
