"""CIFAR-10 ResNet-20, fully sharded (ZeRO-3 style): batch, params and optimizer state split over 'fsdp'.

    python -m jaxdist.main --config=configs/cifar_fsdp.py --workdir=runs/cifar_fsdp

Same rules as every other preset: only the mesh changes (conv_in and embed dims go to 'fsdp').
"""
from configs import cifar_dp


def get_config():
    c = cifar_dp.get_config()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
