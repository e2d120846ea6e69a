"""Device mesh, logical-axis rules, sharded model creation and batch placement.

Every weight names its axes logically (`embed`, `heads`, `conv_out`, ...); `LOGICAL_AXIS_RULES`
is the single table that maps those names to the mesh axes `data`, `fsdp` and `tensor`:

  data    pure data parallelism: batch split, weights replicated
  fsdp    batch split *and* weights sharded (ZeRO-3 style), gathered per layer by XLA
  tensor  weights split within a layer (heads, output channels); activations follow

A fourth axis, `trial`, exists only on meshes from `make_trial_mesh`: K independent copies of one
model (K finetunes with different learning rates, loss weights or seeds) stacked on a leading
array axis named `trial` (`stack_trials`), trained, then sampled, by one compiled program per
stage (`over_trials`). Each copy keeps the (data, fsdp, tensor) layout of its shape within its
group of devices, so a v5e-64 could run 16 base-stage finetunes of 4 chips each:
`make_trial_mesh(16, (-1, 4, 1))` → trial 16 × fsdp 4.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
TRIAL_AXIS = "trial"  # the leading axis of stacked model copies; only on `make_trial_mesh` meshes

# logical axis → mesh axis (or axes, or None for replicated). Every name a weight uses is here.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    (TRIAL_AXIS, TRIAL_AXIS),  # stacked copies of a model, one per trial
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("text_embed", None),
    ("kernel", None),
    ("norm", None),
    ("relpos", None),
    ("position", None),  # Fourier features of pixel coordinates
)


# ------------------------------------------------------------------------------------------------
# Mesh.
# ------------------------------------------------------------------------------------------------


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill at most one -1 in a (data, fsdp, tensor) shape so that the product is `num_devices`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"A mesh shape needs {len(MESH_AXES)} sizes for {MESH_AXES}, got {shape}.")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"Mesh shape {shape} may hold positive sizes and at most one -1.")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"Mesh shape {shape} cannot be filled: {num_devices} devices are not "
                             f"divisible by the fixed sizes' product {known}.")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    elif known != num_devices:
        raise ValueError(f"Mesh shape {shape} holds {known} devices but {num_devices} are available; "
                         "make the product match or use -1 for one axis.")
    return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all), one -1 auto-filled."""
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(shape, len(devices))
    # Auto axes: XLA propagates activation shardings from the explicit in/out shardings of each jit.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def make_trial_mesh(trials: int, shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (trial, data, fsdp, tensor) mesh for `trials` stacked copies of a model laid out by `shape`.

    The trial axis gets the largest number of device groups that divides both `trials` and the
    devices the shape leaves to its -1 (a shape without -1 leaves none: every copy spans all
    devices); each group holds one copy laid out by `shape`, its -1 filled with the group's devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    if trials < 1:
        raise ValueError(f"A trial mesh needs at least 1 trial, got {trials}.")
    shape = tuple(int(s) for s in shape)
    resolve_mesh_shape(shape, len(devices))  # the shape's own errors first
    free = len(devices) // int(np.prod([s for s in shape if s != -1])) if -1 in shape else 1
    groups = math.gcd(trials, free)
    per_copy = resolve_mesh_shape(shape, len(devices) // groups)
    axes = (TRIAL_AXIS, *MESH_AXES)
    return jax.make_mesh((groups, *per_copy), axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


def initialize_distributed(config: Any) -> bool:
    """Start the multi-host runtime when `config.distributed` is set; returns whether it did.

    On TPU pods every argument is auto-detected. For several CPU processes on one host, the
    config also names `coordinator_address`, `num_processes` and `process_id`.
    """
    if not config.get("distributed", False):
        return False
    jax.distributed.initialize(
        coordinator_address=config.get("coordinator_address"),
        num_processes=config.get("num_processes"),
        process_id=config.get("process_id"),
    )
    return True


# ------------------------------------------------------------------------------------------------
# Logical axis names → partition specs.
# ------------------------------------------------------------------------------------------------


def _mesh_axes(axes: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> P:
    """Partition spec for an array with logical axis `names`.

    A dimension the mesh axes do not divide, or a mesh axis already used by an earlier
    dimension, stays replicated: small layers (3 output channels, 3-tap kernels) just replicate.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"Logical axis {name!r} has no rule; add it to LOGICAL_AXIS_RULES.")
        # A mesh without an axis (a model mesh has no `trial`) treats it as size 1: replicated.
        axes = tuple(a for a in _mesh_axes(table[name]) if a not in used and mesh.shape.get(a, 1) > 1)
        if not axes or size % int(np.prod([mesh.shape[a] for a in axes])):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def state_shardings(state: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding for every variable of an (abstract) nnx state; unnamed ones are replicated."""

    def one(x):
        if isinstance(x, nnx.Variable):
            names = x.get_metadata().get("out_sharding")
            spec = logical_to_spec(names, x.shape, mesh, rules) if names else P()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def trial_shardings(tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding for every leaf of a pytree stacked on a leading trial axis: that axis over `trial`,
    the others by each variable's logical names (unnamed arrays: replicated)."""

    def one(x):
        names = x.get_metadata().get("out_sharding") if isinstance(x, nnx.Variable) else None
        names = (TRIAL_AXIS, *(names or (None,) * (len(x.shape) - 1)))
        sharding = NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules))
        return x.replace(sharding) if isinstance(x, nnx.Variable) else sharding

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_sharded(model_fn: Callable[[], nnx.Module], mesh: Mesh,
                     rules=LOGICAL_AXIS_RULES) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and abstract state (shapes, dtypes, target shardings) of a model, nothing allocated: for AOT compiles."""
    graphdef, state = nnx.split(nnx.eval_shape(model_fn))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                         state_shardings(state, mesh, rules))
    return graphdef, state


def sharded_init(model_fn: Callable[[], nnx.Module], mesh: Mesh,
                 rules=LOGICAL_AXIS_RULES) -> tuple[nnx.GraphDef, Callable[[], nnx.State]]:
    """(graphdef, jitted init of the state in its sharded layout): abstract shapes → shardings → jit."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(model_fn))
    shardings = state_shardings(abstract_state, mesh, rules)
    return graphdef, jax.jit(lambda: nnx.split(model_fn())[1], out_shardings=shardings)


def create_sharded(model_fn: Callable[[], nnx.Module], mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.Module:
    """Build a model directly in its sharded layout (call `sharded_init`'s init under the mesh)."""
    graphdef, init = sharded_init(model_fn, mesh, rules)
    with jax.set_mesh(mesh):
        return nnx.merge(graphdef, init())


# ------------------------------------------------------------------------------------------------
# Data placement.
# ------------------------------------------------------------------------------------------------


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """Leave arrays already laid out on `mesh`; replicate any other leaf over it."""
    replicated = NamedSharding(mesh, P())

    def place(x):
        if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(place, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over the data axes, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a batch (pytree of host arrays, this process's rows) as global arrays split over data axes."""
    data_size = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

    def place(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % data_size:
            raise ValueError(f"A batch of {global_rows} examples does not divide over the "
                             f"{data_size} data-parallel devices (data × fsdp) of mesh {dict(mesh.shape)}; "
                             f"use a multiple of {data_size}.")
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(place, batch)


# ------------------------------------------------------------------------------------------------
# Several processes (hosts): host data in, host copies out, one writer.
# ------------------------------------------------------------------------------------------------


def is_lead() -> bool:
    """Whether this process writes the files of a run (process 0; the only one on a single host)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process gets here (nothing to wait for on one): before reading what the lead wrote."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Whether `flag` holds on every process: one answer for all of them (a collective on several)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.bool_(flag))))


def from_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array laid out by `sharding` from a host array that every process holds whole, alike.

    Each process places its own devices' shards: unlike `jax.device_put` onto other processes'
    devices, no collective first checks that the processes' copies agree.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place_batch(batch: Any, mesh: Mesh) -> Any:
    """Global arrays from a batch that every process holds whole, alike: rows split over the data axes
    when they divide over them, otherwise replicated."""
    data_size = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

    def place(x):
        x = np.asarray(x)
        split = x.ndim > 0 and x.shape[0] % data_size == 0
        return from_host(x, batch_sharding(mesh, x.ndim) if split else NamedSharding(mesh, P()))

    return jax.tree.map(place, batch)


def to_host(tree: Any) -> Any:
    """Every array of `tree` as a numpy array of its global value, on every process; arrays that span
    other processes' devices are gathered, so every process must call this alike."""
    leaves, treedef = jax.tree.flatten(tree)
    far = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if far:  # one program gathers them all, replicated
        replicated = [NamedSharding(leaves[i].sharding.mesh, P()) for i in far]
        gathered = jax.jit(lambda xs: xs, out_shardings=replicated)([leaves[i] for i in far])
        for i, x in zip(far, gathered, strict=True):
            leaves[i] = x.addressable_data(0)
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])


# ------------------------------------------------------------------------------------------------
# Stacked trials: K copies of a model in one program.
# ------------------------------------------------------------------------------------------------


def stack_trials(trees: Sequence[Any], mesh: Mesh) -> Any:
    """Pytrees of one structure (nnx states too) stacked on a leading axis laid out over `mesh`'s
    trial axis (`trial_shardings`); every process must call this alike."""
    # Through the host: each process places only its own devices' shards, so no group of devices
    # holds another trial's copy on the way, and nothing compiles. A tree given several times (a
    # stage no trial changed) is read once and broadcast, not copied.
    hosts = {id(t): to_host(t) for t in trees}

    def stack(*xs):
        return np.broadcast_to(xs[0], (len(xs), *xs[0].shape)) if all(x is xs[0] for x in xs) else np.stack(xs)

    stacked = jax.tree.map(stack, *(hosts[id(t)] for t in trees))
    return jax.tree.map(from_host, stacked, trial_shardings(stacked, mesh))


def trial_batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Row groups stacked on a leading trial axis (K, rows, ...): that axis over `trial`, the rows over
    the data axes where they divide them (as `place_batch` splits a batch), the rest replicated."""
    data_size = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    rows = BATCH_AXES if len(shape) > 1 and shape[1] % data_size == 0 else None
    return NamedSharding(mesh, P(TRIAL_AXIS, rows))


def over_trials(fn: Callable[..., Any], mesh: Mesh, in_axes: Sequence[int | None]) -> Callable[..., Any]:
    """`fn` once per trial: vmapped over the leading trial axis of the arguments whose `in_axes` is 0
    (None: shared by every trial), each group of devices on `mesh`'s trial axis running its own
    trials; every output carries the trial axis."""
    # Manual over `trial` only (data, fsdp and tensor stay automatic): under a plain vmap of
    # trial-sharded weights, the SPMD partitioner cannot split the grouped convolutions that vmap
    # makes of stacked kernels over their groups.
    specs = tuple(P() if axis is None else P(TRIAL_AXIS) for axis in in_axes)
    return jax.shard_map(jax.vmap(fn, in_axes=tuple(in_axes)), mesh=mesh, in_specs=specs, out_specs=P(TRIAL_AXIS),
                         axis_names={TRIAL_AXIS})
