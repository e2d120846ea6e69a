"""Neural networks: the video U-Net and its blocks.

Weights carry *logical* axis names (``nnx.with_partitioning``), not mesh axes: placement
is decided in one place, `dreamix_jax.sharding`, from a rules table. Flax's eager sharding
would read those names as mesh axes at construction, so it is switched off here.
"""

from flax import nnx

nnx.use_eager_sharding(False)
