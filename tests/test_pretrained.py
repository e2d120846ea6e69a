"""The shipped weights file: its size, its config, its provenance, and errors for a file that does not fit."""

import json

import numpy as np
import pytest

from configs import cascade as cascade_configs
from dreamix_jax import pretrained


def test_shipped_file_holds_the_tiny_cascade_as_trained():
    assert pretrained.SHIPPED.stat().st_size < 25 * 2**20
    with np.load(pretrained.SHIPPED) as data:
        meta = json.loads(str(data["__meta__"]))
        names = set(data.files)
    expected = json.loads(cascade_configs.get_config("tiny").to_json())
    assert meta["config"] == expected  # the file was exported from configs/cascade.py:tiny
    assert set(meta["steps"]) == set(expected["stage_order"]) and min(meta["steps"].values()) > 0
    prefixes = {name.split("/")[0] for name in names - {"__meta__"}}
    assert prefixes == {*expected["stage_order"], "text_encoder"}


def test_a_file_for_another_config_is_refused(tmp_path):
    with np.load(pretrained.SHIPPED) as data:
        arrays = {k: data[k] for k in data.files}
    del arrays["base/conv_in/kernel"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ValueError, match="no 'base/conv_in/kernel'"):
        pretrained.load(tmp_path / "partial.npz")
    with pytest.raises(FileNotFoundError, match="not found"):
        pretrained.load(tmp_path / "missing.npz")


def test_export_carries_stages_over_from_an_earlier_export(tmp_path):
    config = cascade_configs.get_config("tiny")
    out = pretrained.export(config, {name: str(pretrained.SHIPPED) for name in config.stage_order},
                            tmp_path / "again.npz")
    carried, carried_meta = pretrained.read_file(out)
    shipped, shipped_meta = pretrained.read_file(pretrained.SHIPPED)
    assert carried_meta == shipped_meta
    assert carried.keys() == shipped.keys()
    for name, value in shipped.items():
        np.testing.assert_array_equal(carried[name], value, err_msg=name)
