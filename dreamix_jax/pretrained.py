"""A cascade ready to sample, and the one-file weights format the shipped tiny cascade uses.

`export` gathers the latest weights (the EMA copy where the run kept one) of every stage's
training workdir, and the text encoder the base stage trained, into one `.npz` file that also
holds the resolved cascade config. `load` rebuilds the cascade from that file alone, so the
shipped default needs nothing but the package.

  python -m dreamix_jax.pretrained --out dreamix_jax/assets/tiny_cascade.npz \
      base=/tmp/shapes/base tsr=/tmp/shapes/tsr ssr1=/tmp/shapes/ssr1 ssr2=/tmp/shapes/ssr2

A stage's source may also be an earlier export, to retrain some stages and keep the others
(`base=dreamix_jax/assets/tiny_cascade.npz`). Weights files and workdirs may be local or gs://.
"""

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from dreamix_jax import cascade
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.diffusion import Schedule
from dreamix_jax.models.t5 import T5Config, T5Encoder, make_tokenizer
from dreamix_jax.models.unet3d import UNet3D
from dreamix_jax.sharding import abstract_sharded, make_mesh
from dreamix_jax.text import TextEncoder

SHIPPED = pathlib.Path(__file__).parent / "assets" / "tiny_cascade.npz"
_META = "__meta__"


@dataclasses.dataclass
class Cascade:
    """Stage specs, one U-Net per stage, the prompt encoder and the diffusion schedule."""

    stages: tuple[cascade.Stage, ...]
    unets: list[UNet3D]
    text: TextEncoder
    schedule: Schedule
    config: dict[str, Any]  # the resolved cascade config
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance: training steps per stage

    @property
    def base(self) -> cascade.Stage:
        return self.stages[0]

    @property
    def final(self) -> cascade.Stage:
        return self.stages[-1]

    def with_unets(self, unets: list[UNet3D]) -> "Cascade":
        """The same cascade with other U-Nets (a finetuned copy)."""
        return dataclasses.replace(self, unets=unets)

    def base_only(self) -> "Cascade":
        """The cascade cut to its base stage: what decides an edit's layout, at a fraction of the cost."""
        return dataclasses.replace(self, stages=self.stages[:1], unets=self.unets[:1])


# ------------------------------------------------------------------------------------------------
# Export: training workdirs → one file.
# ------------------------------------------------------------------------------------------------


def flatten_weights(tree: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """A nested dict of arrays → {'prefix/a/b': array}; Orbax's trailing 'value' level is dropped."""
    flat = {}
    for key, value in tree.items():
        name = prefix if key == "value" and not isinstance(value, Mapping) else f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_weights(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def latest_weights(workdir: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """(step, weights) of a training workdir's latest checkpoint: the EMA copy if the run kept one.

    The arrays land on this process's first device, whatever mesh or pod trained them.
    """
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(workdir_lib.as_path(workdir) / "checkpoints", item_names=("state",),
                                    item_handlers=dict(state=ocp.StandardCheckpointHandler()))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train that stage there first.")
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                            manager.item_metadata(step)["state"])
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    manager.close()
    weights = dict(restored.get("ema") or restored["params"])
    for name, frozen in (restored.get("frozen") or {}).items():  # weights the run kept fixed
        weights.setdefault(name, frozen)
    return step, weights


def stage_weights(source: str | os.PathLike, stage: str) -> tuple[int, dict[str, np.ndarray]]:
    """(steps trained, flat weights named 'unet/...' and 'text_encoder/...') of one stage.

    `source` is a cascade weights file (`.npz`) or that stage's training workdir (its latest
    checkpoint, the EMA copy where kept). A run that started from other weights (`init_from`)
    counts their steps too, and a run that kept its text encoder frozen reports the encoder it
    read (`text_encoder_from`), so an export carries the encoder its U-Net was trained against.
    """
    if str(source).endswith(".npz"):
        saved, meta = read_file(source)
        if stage not in meta["steps"]:
            raise KeyError(f"{source} holds no stage {stage!r}; it has {tuple(meta['steps'])}.")
        arrays = {"unet" + k[len(stage):]: v for k, v in saved.items() if k.startswith(stage + "/")}
        return meta["steps"][stage], arrays | part(saved, "text_encoder")
    steps, weights = latest_weights(source)
    arrays = flatten_weights(weights["unet"], "unet")
    run = _run_config(source)
    if "text_encoder" in weights:
        arrays.update(flatten_weights(weights["text_encoder"], "text_encoder"))
    elif run.get("text_encoder_from"):
        arrays.update(text_encoder_weights(run["text_encoder_from"]))
    if run.get("init_from"):
        earlier, initial = stage_weights(run["init_from"], stage)
        steps += earlier
        if not part(arrays, "text_encoder"):  # the encoder it started from, frozen
            arrays.update(part(initial, "text_encoder"))
    return steps, arrays


def text_encoder_weights(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """The text encoder ('text_encoder/...') of a cascade weights file or a training workdir."""
    if str(source).endswith(".npz"):
        arrays, _ = read_file(source)
    else:
        _, arrays = stage_weights(source, _run_config(source).get("stage", "base"))
    encoder = part(arrays, "text_encoder")
    if not encoder:
        raise ValueError(f"{source} holds no text encoder: its run neither trained nor read one.")
    return encoder


def part(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The weights under `prefix/` (names kept)."""
    return {k: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def _run_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config a training run wrote to its workdir ({} if it wrote none)."""
    path = workdir_lib.as_path(workdir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def export(cascade_config: Mapping[str, Any], workdirs: Mapping[str, str], out: str | os.PathLike) -> epath.Path:
    """Write every stage's U-Net and the base stage's text encoder, with the config, to one `.npz`.

    A stage's source is its training workdir, or an earlier export (`.npz`) to carry that stage over.
    """
    stages = cascade.stages_from_config(cascade_config)
    missing = [s.name for s in stages if s.name not in workdirs]
    if missing:
        raise ValueError(f"No workdir given for stages {missing}; pass name=workdir for every stage.")
    arrays, steps = {}, {}
    for stage in stages:
        steps[stage.name], weights = stage_weights(workdirs[stage.name], stage.name)
        arrays.update({stage.name + k[len("unet"):]: v for k, v in part(weights, "unet").items()})
        if stage.kind == "base":
            encoder = part(weights, "text_encoder")
            if not encoder:
                raise ValueError(f"The base stage's source {workdirs[stage.name]} holds no text encoder.")
            arrays.update(encoder)
    config = cascade_config.to_dict() if hasattr(cascade_config, "to_dict") else dict(cascade_config)
    meta = dict(config=config, steps=steps)
    out = workdir_lib.as_path(out)
    with workdir_lib.atomic_path(out) as tmp, open(tmp, "wb") as f:  # numpy adds .npz to a name, not to a file
        np.savez_compressed(f, **{k: v.astype(np.float32) for k, v in arrays.items()},
                            **{_META: np.array(json.dumps(meta))})
    return out


# ------------------------------------------------------------------------------------------------
# Load: one file → a cascade.
# ------------------------------------------------------------------------------------------------


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs use."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def fill(params: nnx.State, arrays: Mapping[str, np.ndarray], prefix: str, *, keep_zeros: bool = False) -> list[str]:
    """Set every weight in `params` from `arrays[prefix/...]`, in its own dtype and sharding (shapes
    checked). With `keep_zeros`, a weight the arrays lack keeps its value if that is all zeros (a
    zero-initialised addition leaves a trained model's function unchanged); returns those names."""
    kept = []
    for path, variable in nnx.to_flat_state(params):
        name = "/".join([prefix, *map(str, path)])
        if name not in arrays and keep_zeros and not np.any(np.asarray(variable.get_value())):
            kept.append(name)
            continue
        if name not in arrays:
            raise ValueError(f"The weights have no {name!r}; they were saved for another config or model version.")
        value, current = arrays[name], variable.get_value()
        if value.shape != current.shape:
            raise ValueError(f"Weight {name!r} has shape {value.shape} in the file but {current.shape} in the model; "
                             "it was saved for another config.")
        variable.set_value(jax.device_put(np.asarray(value).astype(current.dtype), current.sharding))
    return kept


def _filled(model_fn: Callable[[], nnx.Module], arrays: Mapping[str, np.ndarray], prefix: str,
            mesh: Mesh) -> nnx.Module:
    """A model laid out on `mesh` whose every weight is read from `arrays[prefix/...]`: built from
    abstract shapes, so nothing is initialised (and compiled) only to be overwritten."""
    graphdef, state = abstract_sharded(model_fn, mesh)
    fill(state, arrays, prefix)
    return nnx.merge(graphdef, state)


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(weights by name, provenance) of a cascade weights file (local or gs://)."""
    path = workdir_lib.as_path(path)
    _check_weights_path(path)
    try:
        with path.open("rb") as file, np.load(file) as data:
            arrays = {k: data[k] for k in data.files}
        return arrays, json.loads(str(arrays.pop(_META)))
    except Exception as error:  # zip, npy and JSON readers raise many types for a damaged file
        raise ValueError(_unreadable(path, error)) from error


def read_stages(path: str | os.PathLike) -> tuple[cascade.Stage, ...]:
    """The stages of a cascade weights file, from its provenance alone (no weights are read)."""
    path = workdir_lib.as_path(path)
    _check_weights_path(path)
    try:  # a zip file's members are read by themselves: only the provenance's bytes are fetched
        with path.open("rb") as file, np.load(file) as data:
            meta = json.loads(str(data[_META]))
        return cascade.stages_from_config(_tuples(meta["config"]))
    except Exception as error:
        raise ValueError(_unreadable(path, error)) from error


def _check_weights_path(path: epath.Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Cascade weights {path} not found; export them with `python -m "
                                "dreamix_jax.pretrained` or reinstall the package.")


def _unreadable(path: epath.Path, error: Exception) -> str:
    reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return (f"Cannot read cascade weights {path} ({reason}); give a file written by `python -m "
            "dreamix_jax.pretrained` (the shipped one is dreamix_jax/assets/tiny_cascade.npz).")


def load(path: str | os.PathLike = SHIPPED, mesh: Mesh | None = None,
         cache_dir: str | os.PathLike | None = None) -> Cascade:
    """Rebuild the cascade a weights file holds (default: the shipped tiny cascade)."""
    arrays, meta = read_file(path)
    mesh = mesh or make_mesh((-1, 1, 1))
    config = _tuples(meta["config"])
    stages = cascade.stages_from_config(config)
    unets = [_filled(lambda s=s: UNet3D(s.unet, rngs=nnx.Rngs(0)), arrays, s.name, mesh) for s in stages]
    text_cfg = config["text"]
    t5_cfg = T5Config.from_config(text_cfg["model"])
    encoder = _filled(lambda: T5Encoder(t5_cfg, rngs=nnx.Rngs(0)), arrays, "text_encoder", mesh)
    text = TextEncoder(encoder, make_tokenizer(text_cfg["tokenizer"]), text_cfg["max_length"], mesh,
                       cache_dir=cache_dir)
    return Cascade(stages=stages, unets=unets, text=text, schedule=Schedule(**config["schedule"]), config=config,
                   meta=dict(steps=meta.get("steps", {}), path=str(path)))


def main(argv: list[str]) -> None:
    """`--out FILE name=workdir ...`: export a trained tiny cascade."""
    from configs import cascade as cascade_configs

    args = argv[1:]
    if len(args) < 2 or args[0] != "--out":
        raise SystemExit("usage: python -m dreamix_jax.pretrained --out FILE stage=workdir [stage=workdir ...]")
    workdirs = dict(a.split("=", 1) for a in args[2:])
    out = export(cascade_configs.get_config("tiny"), workdirs, args[1])
    print(f"Wrote {out} ({out.stat().length / 2**20:.2f} MiB).")


if __name__ == "__main__":
    main(sys.argv)
