"""ResNets: CIFAR-style ResNet-20/56 (3 stages of basic blocks, He et al. 2015, section 4.2) and
ImageNet-style ResNet-18/50 (7x7 stem + max-pool, basic or bottleneck blocks), which also run at small
resolution. Shortcuts that change shape use a 1x1 conv + BatchNorm (option B), as the peer benchmarks do.
`model.width` sets the first stage's channels (each later stage doubles them); 0 keeps the paper's.
"""
import functools

import jax.numpy as jnp
from flax import nnx

from jaxdist.models import layers


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, in_ch, ch, stride, rngs, dtype):
        self.conv1 = layers.conv(in_ch, ch, 3, rngs, stride=stride, bias=False, dtype=dtype, init=layers._he_init)
        self.bn1 = layers.batch_norm(ch, rngs, dtype=dtype)
        self.conv2 = layers.conv(ch, ch, 3, rngs, bias=False, dtype=dtype, init=layers._he_init)
        self.bn2 = layers.batch_norm(ch, rngs, dtype=dtype)
        self.shortcut = _projection(in_ch, ch, stride, rngs, dtype)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (self.shortcut(x) if self.shortcut else x))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch, ch, stride, rngs, dtype):
        out = ch * 4
        self.conv1 = layers.conv(in_ch, ch, 1, rngs, bias=False, dtype=dtype, init=layers._he_init)
        self.bn1 = layers.batch_norm(ch, rngs, dtype=dtype)
        self.conv2 = layers.conv(ch, ch, 3, rngs, stride=stride, bias=False, dtype=dtype, init=layers._he_init)
        self.bn2 = layers.batch_norm(ch, rngs, dtype=dtype)
        self.conv3 = layers.conv(ch, out, 1, rngs, bias=False, dtype=dtype, init=layers._he_init)
        self.bn3 = layers.batch_norm(out, rngs, dtype=dtype, zero_scale=True)
        self.shortcut = _projection(in_ch, out, stride, rngs, dtype)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + (self.shortcut(x) if self.shortcut else x))


def _projection(in_ch, out_ch, stride, rngs, dtype):
    if stride == 1 and in_ch == out_ch:
        return None
    return nnx.Sequential(
        layers.conv(in_ch, out_ch, 1, rngs, stride=stride, bias=False, dtype=dtype, init=layers._he_init),
        layers.batch_norm(out_ch, rngs, dtype=dtype))


class ResNet(nnx.Module):
    def __init__(self, *, stage_sizes, block, widths, num_classes, image_shape, rngs, dtype=jnp.float32,
                 imagenet_stem=False):
        in_ch = image_shape[-1]
        stem_width = widths[0]
        self.imagenet_stem = imagenet_stem
        self.stem_conv = layers.conv(in_ch, stem_width, 7 if imagenet_stem else 3, rngs,
                                     stride=2 if imagenet_stem else 1, bias=False, dtype=dtype,
                                     init=layers._he_init)
        self.stem_bn = layers.batch_norm(stem_width, rngs, dtype=dtype)
        blocks, ch = [], stem_width
        for i, (n, width) in enumerate(zip(stage_sizes, widths)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(ch, width, stride, rngs, dtype))
                ch = width * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = layers.dense(ch, num_classes, rngs, names=("embed", "classes"), dtype=dtype)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        if self.imagenet_stem:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


OPTIONS = ("width",)


def _widths(width: int, stages: int) -> tuple[int, ...]:
    return tuple(width * 2**i for i in range(stages))


def cifar_resnet(depth: int, width: int = 0, **kw):
    n = (depth - 2) // 6
    return ResNet(stage_sizes=(n, n, n), block=BasicBlock, widths=_widths(width or 16, 3), **kw)


def imagenet_resnet(stage_sizes, block, width: int = 0, **kw):
    return ResNet(stage_sizes=stage_sizes, block=block, widths=_widths(width or 64, 4), imagenet_stem=True, **kw)


ResNet8 = functools.partial(cifar_resnet, 8)  # tests only
ResNet20 = functools.partial(cifar_resnet, 20)
ResNet56 = functools.partial(cifar_resnet, 56)
ResNet18 = functools.partial(imagenet_resnet, (2, 2, 2, 2), BasicBlock)
ResNet50 = functools.partial(imagenet_resnet, (3, 4, 6, 3), Bottleneck)
