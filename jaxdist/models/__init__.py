"""The Flax NNX models. Importing the package spares their tracing a walk over the traced program at each
Flax probe of a tracer's sharding, on the pinned JAX (linear_tracing.py says why)."""
from jaxdist.models import linear_tracing  # noqa: F401
