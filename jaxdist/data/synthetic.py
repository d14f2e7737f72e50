"""Synthetic stand-ins for a configured dataset: same image shape, no files.

The step benchmark (jaxdist.bench) and the planner (jaxdist.plan) compile and time the training step
on these, so they run anywhere without a download and measure the step, not the input pipeline.
"""
from jaxdist.errors import ConfigError

# Image shape of each dataset, so the benchmark needs none of them on disk.
_NATIVE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "mnist": (28, 28, 1),
                  "fashion_mnist": (28, 28, 1), "digits": (8, 8, 1)}


def synthetic_shape(data_config) -> tuple[int, int, int]:
    """The configured dataset's image shape (after data.image_size resizing, if set). The transforms then
    apply data.view to the synthetic images too, so a 'rows' view benchmarks (H, W*C) sequences."""
    size = data_config.image_size
    if data_config.name == "synthetic":
        shape = tuple(data_config.synthetic_shape)
    elif data_config.name in _NATIVE_SHAPES:
        shape = _NATIVE_SHAPES[data_config.name]
    elif data_config.name == "ucr":  # bundled with sktime, so read offline: (longest series, 1, variables)
        from jaxdist.data import sources
        shape = sources.load(data_config).train.source.images.shape[1:]
    elif size:
        shape = (size, size, 3)
    else:
        raise ConfigError(f"the step benchmark needs the image shape of {data_config.name!r}: set data.image_size")
    return (size, size, shape[2]) if size else shape


def use_synthetic_data(config) -> str:
    """Point `config` at synthetic images of its dataset's shape (the step needs no download); returns the
    dataset's name."""
    dataset = config.data.name
    config.data.synthetic_shape = synthetic_shape(config.data)
    config.data.name = "synthetic"
    config.data.image_size = 0  # the synthetic images already have the final size
    config.data.path = config.data.val_path = config.data.tfds_data_dir = ""  # the real data's location: unread
    return dataset
