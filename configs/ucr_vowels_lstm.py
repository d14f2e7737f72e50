"""Japanese Vowels (UCR/UEA archive): 9 speakers from 12 LPC coefficients over 7-29 frames, a
bidirectional LSTM on the padded, masked sequences, data-parallel.

    pip install -e '.[ucr]'   # sktime, whose wheel bundles the data set: no download
    python -m jaxdist.main --config=configs/ucr_vowels_lstm.py --workdir=runs/vowels

270 train / 370 test series; 97.6% test accuracy in about 25 s on the 2-core VM. Other bundled sets by name: --config.data.ucr_name=BasicMotions (also
GunPoint, ItalyPowerDemand, ArrowHead, OSULeaf, ...; the sktime wheel's list is in the error for a wrong name).
docs/rnn.md.
"""
from jaxdist.config import base_config


def get_config():
    c = base_config()
    c.cpu_devices = 8
    c.mesh.data = -1
    c.model.name = "lstm"
    c.model.hidden_size = 64
    c.model.num_layers = 1
    c.model.bidirectional = True
    c.model.pool = "mean"  # over each series' valid frames
    c.model.num_classes = 9
    c.data.name = "ucr"
    c.data.ucr_name = "JapaneseVowels"
    c.data.view = "rows"  # (T, 1, 12) -> T steps of 12 features
    c.batch_size = 32
    c.eval_batch_size = 64
    c.total_steps = 200  # ~25 epochs
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 200
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.003
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    return c
