"""CIFAR-10 ResNet-20, 3-D hybrid: data x fsdp x model = 2 x 2 x 2 on 8 devices.

    python -m jaxdist.main --config=configs/cifar_hybrid.py --workdir=runs/cifar_hybrid
"""
from configs import cifar_dp


def get_config():
    c = cifar_dp.get_config()
    c.mesh.data = 2
    c.mesh.fsdp = 2
    c.mesh.model = 2
    return c
