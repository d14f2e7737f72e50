"""Process-level setup that must happen before JAX starts its backends."""
import jax


def configure_devices(config) -> None:
    """Simulate `config.cpu_devices` CPU devices so every mesh shape runs on a laptop or CI.

    Only the CPU backend reads this; on a GPU or TPU host the accelerators stay the default devices.
    """
    if config.cpu_devices:
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)


def is_primary() -> bool:
    """Process 0 alone prints progress and writes logs and metrics."""
    return jax.process_index() == 0
