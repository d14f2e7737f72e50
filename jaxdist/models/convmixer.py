"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", 2022): a patch stem, `depth` identical
blocks at one resolution, and a linear head. Isotropic, so its blocks stack into one array per
parameter with a leading 'layers' axis, which pipeline parallelism splits across stages.

Normalization is LayerNorm over channels (as ConvNeXt uses) instead of the paper's BatchNorm: a block's
output then depends on its own example only, so a pipeline's microbatches compute exactly the function
the whole batch does, and the pipelined model's losses match the unpipelined one's.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdist.models import layers

# config.model fields the constructor reads (registry.options passes them in).
OPTIONS = ("dim", "depth", "patch_size", "kernel_size")


def scan_layers(block_fn, stacked, x):
    """Apply the stacked layers one after the other: the runner when the stack is not pipelined."""
    return jax.lax.scan(lambda h, layer: (block_fn(layer, h), None), x, stacked)[0]


class Block(nnx.Module):
    """Residual(depthwise conv -> GELU -> norm), then pointwise conv -> GELU -> norm."""

    def __init__(self, dim: int, kernel_size: int, rngs: nnx.Rngs, dtype):
        self.depthwise = layers.DepthwiseConv(dim, kernel_size, rngs, dtype=dtype)
        self.norm1 = layers.layer_norm(dim, rngs, dtype=dtype)
        # A 1x1 conv as a dense layer over channels: the same math, and XLA (jaxlib 0.10.2) partitions a 1x1
        # conv vmapped over pipeline stages wrongly (experiments/pointwise_conv_repro.py).
        self.pointwise = layers.dense(dim, dim, rngs, names=("conv_in", "conv_out"), dtype=dtype)
        self.norm2 = layers.layer_norm(dim, rngs, dtype=dtype)

    def __call__(self, x):
        x = x + self.norm1(nnx.gelu(self.depthwise(x)))
        return self.norm2(nnx.gelu(self.pointwise(x)))


class ConvMixer(nnx.Module):
    def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int], rngs: nnx.Rngs, dtype=jnp.float32,
                 dim: int = 256, depth: int = 8, patch_size: int = 2, kernel_size: int = 5, stack_runner=scan_layers):
        self.stem = layers.conv(image_shape[-1], dim, patch_size, rngs, stride=patch_size, padding="VALID",
                                dtype=dtype)
        self.stem_norm = layers.layer_norm(dim, rngs, dtype=dtype)

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_blocks(rngs):
            return Block(dim, kernel_size, rngs, dtype)

        self.blocks = stacked_blocks(rngs)  # every param has a leading (depth,) axis named 'layers'
        self.stack_runner = stack_runner  # runner(block_fn, stacked params, x) -> x: scan, or a pipeline
        self.head = layers.dense(dim, num_classes, rngs, names=("embed", "classes"), dtype=dtype)

    def __call__(self, x):
        x = self.stem_norm(nnx.gelu(self.stem(x)))
        graph, stacked = nnx.split(self.blocks)
        x = self.stack_runner(lambda layer, h: nnx.merge(graph, layer)(h), stacked, x)
        return self.head(x.mean(axis=(1, 2)))
