"""Image transforms on the host, a batch at a time: numpy in, numpy out, randomness passed in explicitly.

Every random choice of an example comes from its 64-bit key, which the pipeline derives from (seed, global
position of the example) (`pipeline.example_keys`), so augmentation is reproducible and does not depend on
thread, worker or process counts. Shifts, flips and normalization are whole-batch numpy operations: the
per-example Python they replace held the GIL for ~240 us an image, which capped the input of a GPU step
below a fifth of its speed (docs/benchmarks.md, "Input pipeline" row a and "On one GPU"). Images arrive as
HWC uint8 (decoded files, tfds) or float32 in [0, 1] (in-memory arrays) and leave as float32, normalized
with the dataset's per-channel mean and std.
"""
import math

import numpy as np
from PIL import Image

from jaxdist.config import check_choice

AUGMENTATIONS = ("none", "flip", "crop", "crop_flip", "inception_crop")
VIEWS = ("image", "rows")


def validate(data_config) -> None:
    check_choice("data.augment", data_config.augment, AUGMENTATIONS)
    check_choice("data.view", data_config.view, VIEWS)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """A new float32 array in [0, 1] units (uint8 scaled by 1/255): the caller may change it in place."""
    out = image.astype(np.float32)
    if image.dtype == np.uint8:
        out /= 255.0
    return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with PIL (antialiased when shrinking), keeping the dtype."""
    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.uint8:
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        out = np.asarray(pil.resize((width, height), Image.BILINEAR))
        return out[..., None] if out.ndim == 2 else out
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                           .resize((width, height), Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1)


def key_draws(keys: np.ndarray, field: int, choices: int) -> np.ndarray:
    """One of `choices` equally likely integers per key, from its 21-bit field number `field` (0, 1 or 2);
    different fields of a key are independent draws."""
    bits = (keys >> np.uint64(21 * field)) & np.uint64(2**21 - 1)
    return ((bits * np.uint64(choices)) >> np.uint64(21)).astype(np.int64)


def pad_crop(images: np.ndarray, padding: int, keys: np.ndarray) -> np.ndarray:
    """CIFAR-style, on a batch (N, H, W, C): zero-pad each side, then take a random crop of the original size
    (= a random shift of each image by up to `padding` pixels, zeros shifted in), computed without building
    the padded images. One slice copy per image: a gather of the whole batch at once is ~10x slower."""
    h, w = images.shape[1:3]
    out = np.zeros_like(images)
    shifts = zip(*(key_draws(keys, field, 2 * padding + 1) - padding for field in (0, 1)))
    for image, target, (dy, dx) in zip(images, out, shifts):
        target[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
            image[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def random_flip(images: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each image of a batch (N, H, W, C) mirrored left-right with probability 1/2."""
    flip = key_draws(keys, 2, 2).astype(bool)
    out = images.copy()
    out[flip] = images[flip][:, :, ::-1]
    return out


def inception_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                   area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """Random-resized crop (Inception / torchvision RandomResizedCrop): random area and aspect ratio."""
    h, w = image.shape[:2]
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        ch, cw = round(math.sqrt(target / aspect)), round(math.sqrt(target * aspect))
        if 0 < ch <= h and 0 < cw <= w:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return resize(image[top:top + ch, left:left + cw], size, size)
    return center_crop(image, size, fraction=1.0)  # fallback after 10 misses, as torchvision does


def center_crop(image: np.ndarray, size: int, fraction: float = 0.875) -> np.ndarray:
    """Eval for ImageNet-style data: resize the shorter side to size / fraction, take the center."""
    h, w = image.shape[:2]
    scale = size / fraction / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = resize(image, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[top:top + size, left:left + size]


class ImageTransform:
    """Decoded examples -> model input, for the train or the eval split of one dataset.

    A picklable object (not a closure), so Grain can ship it to worker processes.
    """

    def __init__(self, data_config, mean, std, train: bool):
        self.augment = data_config.augment if train else "none"
        self.size = data_config.image_size
        self.padding = data_config.crop_padding
        self.view = data_config.view
        self.resized_crop = data_config.augment == "inception_crop"
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.random = self.augment != "none"  # needs a key per example (the pipeline skips them otherwise)

    def __call__(self, image: np.ndarray, key: int | None = None) -> np.ndarray:
        """One example (eval, inference); `key` only where `random`."""
        return self.batch([image], None if key is None else np.asarray([key], np.uint64))[0]

    def batch(self, images: list[np.ndarray], keys: np.ndarray | None) -> np.ndarray:
        """Examples -> one (N, ...) float32 batch; `keys` (uint64, one per example) only where `random`."""
        if self.augment == "inception_crop":  # per example: a resize of its own crop
            images = [inception_crop(image, self.size, np.random.default_rng(int(key)))
                      for image, key in zip(images, keys)]
        elif self.size and self.resized_crop:  # eval split of an inception_crop run
            images = [center_crop(image, self.size) for image in images]
        elif self.size:
            images = [resize(image, self.size, self.size) for image in images]
        batch = np.stack(images)
        if self.augment in ("crop", "crop_flip"):
            batch = pad_crop(batch, self.padding, keys)
        if self.augment in ("flip", "crop_flip", "inception_crop"):
            batch = random_flip(batch, keys)
        batch = to_unit_float(batch)
        batch -= self.mean  # in place: each pass over a new batch-sized array costs as much as the arithmetic
        batch /= self.std
        if self.view == "rows":  # one time step per image row: (H, W, C) -> (H, W * C)
            batch = batch.reshape(*batch.shape[:2], -1)
        return np.ascontiguousarray(batch)
