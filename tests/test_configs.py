"""Config argument parsing and the shipped U-Net configs."""

import pytest

from configs import common
from configs import unet as unet_configs
from dreamix_jax.models.unet3d import UNet3DConfig


def test_parse_arg_variants_flags_and_values():
    spec = dict(variant="tiny", runlocal=False, steps=10, lr=1e-4)
    assert common.parse_arg("imagen_base", **spec).variant == "imagen_base"
    arg = common.parse_arg("variant=x,runlocal,steps=20,lr=3e-5", **spec)
    assert (arg.variant, arg.runlocal, arg.steps, arg.lr) == ("x", True, 20, 3e-5)
    assert common.parse_arg("", **spec).to_dict() == spec
    assert common.parse_arg("runlocal=false", **spec).runlocal is False


@pytest.mark.parametrize("arg, message", [
    ("tiny,other", "neither a flag nor a variant"),
    ("nope=1", "Unknown config argument 'nope'"),
    ("runlocal=maybe", "must be true or false"),
])
def test_parse_arg_errors(arg, message):
    with pytest.raises(ValueError, match=message):
        common.parse_arg(arg, variant="tiny", runlocal=False)


def test_unet_configs_build_and_unknown_variant_fails():
    for variant in unet_configs.VARIANTS:
        config = unet_configs.get_config(variant)
        cfg = UNet3DConfig.from_config(config.model)
        assert cfg.text_dim == config.text.dim
        levels = len(cfg.channels)
        assert config.video.height % 2 ** (levels - 1) == 0 and config.video.width % 2 ** (levels - 1) == 0
    assert unet_configs.get_config("imagen_base,runlocal").batch_size == 1
    with pytest.raises(ValueError, match="Unknown U-Net variant 'huge'"):
        unet_configs.get_config("huge")
