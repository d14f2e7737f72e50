"""Offline RNN default: an LSTM reads each 8x8 digit row by row (8 steps of 8 features), data-parallel.

    python -m jaxdist.main --config=configs/seqdigits_lstm.py --workdir=runs/seqdigits

Needs no download. On 8 simulated CPU devices (2 cores) it reaches 98.6% test accuracy in about
25 s, start-up and compile included (docs/rnn.md has the measured run).
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "lstm"
    c.model.hidden_size = 128
    c.model.num_layers = 1
    c.data.name = "digits"
    c.data.view = "rows"  # (8, 8, 1) image -> 8 time steps of 8 features
    c.batch_size = 128
    c.total_steps = 400
    c.log_every = 100
    c.eval_every = 200
    c.checkpoint_every = 400
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.003
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    return c
