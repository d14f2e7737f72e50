"""CIFAR-10 ResNet-20, tensor-parallel: conv output channels (and dense hidden units) split on 'model'.

    python -m jaxdist.main --config=configs/cifar_tp.py --workdir=runs/cifar_tp

model=2 with the rest of the devices on 'data'. Pure TP of a small CNN is communication-bound; this
preset exists to show the strategy is a config change, and to measure it (docs/benchmarks.md).
"""
from configs import cifar_dp


def get_config():
    c = cifar_dp.get_config()
    c.mesh.data = -1
    c.mesh.model = 2
    return c
