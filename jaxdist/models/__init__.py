"""The Flax NNX models. Importing the package makes tracing them linear in their size on the pinned JAX
(linear_tracing.py says why)."""
from jaxdist.models import linear_tracing  # noqa: F401
