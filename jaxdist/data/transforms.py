"""Per-example image transforms on the host: numpy in, numpy out, randomness passed in explicitly.

Every random choice comes from the `rng` the pipeline derives from (seed, global position of the
example), so augmentation is reproducible and does not depend on thread, worker or process counts.
Images arrive as HWC uint8 (decoded files, tfds) or float32 in [0, 1] (in-memory arrays) and leave as
float32, normalized with the dataset's per-channel mean and std.
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
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


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


def pad_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """CIFAR-style: zero-pad each side, then take a random crop of the original size (= a random shift
    by up to `padding` pixels, zeros shifted in), computed without building the padded image."""
    h, w = image.shape[:2]
    dy, dx = rng.integers(-padding, padding + 1, size=2)
    out = np.zeros_like(image)
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        image[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < 0.5 else image


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
    """Decoded example -> model input, for the train or the eval split of one dataset.

    A picklable callable (not a closure), so Grain can ship it to worker processes.
    """

    def __init__(self, data_config, mean, std, train: bool):
        self.augment = data_config.augment if train else "none"
        self.size = data_config.image_size
        self.padding = data_config.crop_padding
        self.view = data_config.view
        self.resized_crop = data_config.augment == "inception_crop"
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.random = self.augment != "none"  # needs an rng per example (the pipeline skips it otherwise)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if self.augment == "inception_crop":
            image = inception_crop(image, self.size, rng)
        elif self.size and self.resized_crop:  # eval split of an inception_crop run
            image = center_crop(image, self.size)
        elif self.size:
            image = resize(image, self.size, self.size)
        if self.augment in ("crop", "crop_flip"):
            image = pad_crop(image, self.padding, rng)
        if self.augment in ("flip", "crop_flip", "inception_crop"):
            image = random_flip(image, rng)
        image = (to_unit_float(image) - self.mean) / self.std
        if self.view == "rows":  # one time step per image row: (H, W, C) -> (H, W * C)
            image = image.reshape(image.shape[0], -1)
        return np.ascontiguousarray(image)
