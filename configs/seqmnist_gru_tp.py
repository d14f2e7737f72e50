"""Sequential MNIST with a 2-layer GRU, tensor-parallel: each gate's hidden units split over model=2,
the batch over the rest (data=4 on 8 devices).

    python -m jaxdist.main --config=configs/seqmnist_gru_tp.py --workdir=runs/seqmnist_gru_tp

Same data and recipe as configs/seqmnist_lstm.py. Under TP every time step all-gathers h (the recurrent
matmul needs all hidden units), so on CPU this preset shows the strategy rather than a speed-up. docs/rnn.md.
"""
from configs import seqmnist_lstm


def get_config():
    c = seqmnist_lstm.get_config()
    c.model.name = "gru"
    c.mesh.data = -1
    c.mesh.model = 2
    return c
