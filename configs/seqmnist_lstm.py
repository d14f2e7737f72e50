"""Sequential MNIST (row by row: 28 steps of 28 pixels), a 2-layer LSTM with 128 units, data-parallel.

    python -m jaxdist.main --config=configs/seqmnist_lstm.py --workdir=runs/seqmnist
    python -m jaxdist.bench --config=configs/seqmnist_lstm.py           # sequences/s on synthetic data

Reads the MNIST download (--config.data.path=DIR, docs/data.md) or tfds mnist prepared once (python -m
jaxdist.data.prepare mnist); the benchmark needs neither.
Adam with global-norm clipping, the usual recipe for LSTMs; 3 epochs. docs/rnn.md.
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "lstm"
    c.model.hidden_size = 128
    c.model.num_layers = 2
    c.data.name = "mnist"
    c.data.view = "rows"  # (28, 28, 1) image -> 28 time steps of 28 features
    c.batch_size = 128
    c.total_steps = 3 * 60_000 // 128
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.002
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 100
    return c
