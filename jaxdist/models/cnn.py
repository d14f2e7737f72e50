"""The seeds' simple CNN: conv3x3 32 -> pool -> conv3x3 64 -> pool -> dense 512 -> dense classes."""
import jax.numpy as jnp
from flax import nnx

from jaxdist.models import layers


class CNN(nnx.Module):
    def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int], rngs: nnx.Rngs,
                 dtype=jnp.float32):
        h, w, c = image_shape
        self.conv1 = layers.conv(c, 32, 3, rngs, dtype=dtype)
        self.conv2 = layers.conv(32, 64, 3, rngs, dtype=dtype)
        flat = (h // 4) * (w // 4) * 64
        # Column- then row-parallel under TP: hidden units split on 'model', one all-reduce at the head.
        self.fc1 = layers.dense(flat, 512, rngs, names=("embed", "hidden"), dtype=dtype)
        self.head = layers.dense(512, num_classes, rngs, names=("hidden", "classes"), dtype=dtype)

    def __call__(self, x):
        for conv in (self.conv1, self.conv2):
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.head(x)
