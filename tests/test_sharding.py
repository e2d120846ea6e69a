"""Meshes, the logical-axis rules, sharded model creation and batch placement on 8 CPU devices."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from conftest import apply_unet, make_inputs
from configs import unet as unet_configs
from dreamix_jax import sharding
from dreamix_jax.models.unet3d import UNet3D, UNet3DConfig

# Expected placement of a few representative weights of the tiny U-Net, per mesh (data, fsdp, tensor).
EXPECTED = {
    (8, 1, 1): {  # pure data parallelism: every weight replicated
        ("down", 0, 0, "res", "conv1", "kernel"): P(None, None, None, None),
        ("noise_mlp", "layers", 0, "kernel"): P(None, None),
    },
    (2, 4, 1): {  # ZeRO-style: input channels split over fsdp
        ("down", 0, 0, "res", "conv1", "kernel"): P(None, None, "fsdp", None),
        ("conv_out", "kernel"): P(None, None, "fsdp", None),
        ("noise_mlp", "layers", 0, "kernel"): P("fsdp", None),
        ("down", 1, 0, "spatial_attn", "attn", "query", "kernel"): P("fsdp", None, None),
    },
    (1, 2, 4): {  # fsdp × tensor; 3 output channels and 2 heads do not split 4 ways: replicated
        ("down", 0, 0, "res", "conv1", "kernel"): P(None, None, "fsdp", "tensor"),
        ("down", 0, 0, "res", "conv1", "bias"): P("tensor"),
        ("conv_out", "kernel"): P(None, None, "fsdp", None),
        ("noise_mlp", "layers", 0, "kernel"): P("fsdp", "tensor"),
        ("down", 1, 0, "spatial_attn", "attn", "query", "kernel"): P("fsdp", None, None),
        ("down", 1, 0, "temporal_attn", "relative_bias"): P(None, None),
    },
}


@pytest.fixture(scope="module")
def reference_output(tiny_config, tiny_model):
    """Single-device forward of the tiny U-Net at batch 8 (divisible by every mesh's data axes)."""
    inputs = make_inputs(tiny_config, batch=8)
    return inputs, np.asarray(apply_unet(*tiny_model, *inputs))


# The mesh on which the model is built by `create_sharded` (its sharded random initialiser compiles for
# ~12 s a mesh); on the others the single-device model is placed by the same rules (`state_shardings`).
BUILT_ON = (1, 2, 4)


def _laid_out(mesh, tiny_config, tiny_model) -> nnx.Module:
    """The tiny U-Net at its seeded initialisation, laid out on `mesh`."""
    if tuple(mesh.shape.values()) == BUILT_ON:
        cfg = UNet3DConfig.from_config(tiny_config.model)
        return sharding.create_sharded(lambda: UNet3D(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = tiny_model
    return nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(state, mesh)))


@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_sharded_model_layout_and_forward(shape, tiny_config, tiny_model, reference_output):
    mesh = sharding.make_mesh(shape)
    model = _laid_out(mesh, tiny_config, tiny_model)
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))

    for path, spec in EXPECTED[shape].items():
        array = params[path][...]
        assert array.sharding.mesh.shape == mesh.shape
        assert array.sharding.spec == spec, (path, array.sharding.spec)
    for path, var in params.items():  # every sharded dimension divides evenly
        for dim, axes in zip(var.shape, var[...].sharding.spec):
            for axis in (axes,) if isinstance(axes, str) else axes or ():
                assert dim % mesh.shape[axis] == 0, path

    inputs, expected = reference_output
    placed = sharding.shard_batch(inputs, mesh)
    assert placed[0].sharding.spec == P(("data", "fsdp"), None, None, None, None)
    with jax.set_mesh(mesh):
        out = apply_unet(*nnx.split(model), *placed)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_mesh_auto_fills_one_axis():
    assert sharding.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    assert dict(sharding.make_mesh((-1, 1, 2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("shape, message", [
    ((2, 2, 1), "holds 4 devices but 8 are available"),
    ((3, -1, 1), "8 devices are not divisible by the fixed sizes' product 3"),
    ((-1, -1, 1), "at most one -1"),
    ((8, 1), "needs 3 sizes"),
])
def test_mesh_mismatch_is_one_sentence(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)


def test_batch_not_divisible_by_data_axes():
    mesh = sharding.make_mesh((2, 2, 2))
    with pytest.raises(ValueError, match="batch of 6 examples does not divide over the 4 data-parallel"):
        sharding.shard_batch(np.zeros((6, 3)), mesh)


def test_every_logical_name_has_a_rule(tiny_config):
    model = nnx.eval_shape(lambda: UNet3D(UNet3DConfig.from_config(tiny_config.model), rngs=nnx.Rngs(0)))
    names = {n for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
             for n in v.get_metadata()["out_sharding"]}
    assert names <= {name for name, _ in sharding.LOGICAL_AXIS_RULES}
    with pytest.raises(ValueError, match="'nonsense' has no rule"):
        sharding.logical_to_spec(("nonsense",), (8,), sharding.make_mesh((1, 8, 1)))


def test_config_mesh_default_uses_all_devices():
    mesh = sharding.make_mesh(unet_configs.get_config("tiny").mesh.shape)
    assert mesh.devices.size == jax.device_count() == 8


def test_distributed_initialisation_only_when_configured(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert not sharding.initialize_distributed(unet_configs.get_config("tiny"))
    assert calls == []
    config = unet_configs.get_config("tiny")
    config.distributed = True
    config.coordinator_address, config.num_processes, config.process_id = "localhost:1234", 2, 1
    assert sharding.initialize_distributed(config)
    assert calls == [dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)]
