"""`shapes_video`: the synthetic clips of `data/synthetic.py` as a TFDS dataset in ArrayRecord files.

Built and read without TensorFlow (`tfds.data_source`). Each example is one clip rendered from its
seed at the builder config's size, stored as uint8, with its captions and every attribute.

The data dir may be gs://. ArrayRecord files are read and written with local file calls only, so
the dataset is then read from a local mirror (`<user cache>/tfds/<bucket>/<path>`): downloaded
from the bucket when it holds the dataset, else built here and uploaded for later runs and hosts.

Splits: `train` (no held-out colour–shape pair), `test` (same distribution, other seeds) and
`held_out` (only held-out pairs, for compositional edits).

  python -c "from dreamix_jax.data import shapes_video; shapes_video.build('/data/tfds')"
"""

import dataclasses
import pathlib

import grain
import numpy as np
import tensorflow_datasets as tfds

from dreamix_jax import compile_cache, workdir
from dreamix_jax.data import synthetic

# Seeds of each split start far apart, so the splits never share a clip.
SPLIT_SEEDS = {"train": 0, "test": 1_000_000, "held_out": 2_000_000}


@dataclasses.dataclass
class ShapesVideoConfig(tfds.core.BuilderConfig):
    """Clip size and split sizes."""

    frames: int = 16
    height: int = 64
    width: int = 64
    sizes: tuple[tuple[str, int], ...] = (("train", 2048), ("test", 64), ("held_out", 64))


class ShapesVideo(tfds.core.GeneratorBasedBuilder):
    """One textured shape moving over a plain background, captioned."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        ShapesVideoConfig(name="tiny", description="16 frames of 64 × 64 (the tiny cascade's output)."),
        ShapesVideoConfig(name="smoke", description="Two-frame 16 × 16 clips for tests.", frames=2, height=16,
                          width=16, sizes=(("train", 16), ("test", 4), ("held_out", 4))),
    ]
    DEFAULT_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(c.frames, c.height, c.width, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "image_caption": tfds.features.Text(),  # for single frames used as images (no motion)
            "seed": tfds.features.Scalar(dtype=np.int64),
            "color": tfds.features.Text(),
            "shape": tfds.features.Text(),
            "direction": tfds.features.Text(),
            "background": tfds.features.Text(),
            "size": tfds.features.Text(),
            "start": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "held_out": tfds.features.Scalar(dtype=np.bool_),
        }), description=__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is rendered, nothing is downloaded
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.sizes}

    def _generate_examples(self, split: str, count: int):
        c = self.builder_config
        for i in range(count):
            seed = SPLIT_SEEDS[split] + i
            attrs = synthetic.sample_attributes(seed, held_out=split == "held_out")
            yield seed, example(attrs, seed, c.frames, c.height, c.width)


def example(attrs: synthetic.Attributes, seed: int, frames: int, height: int, width: int,
            rgb: np.ndarray | None = None) -> dict:
    """One dataset record: the rendered clip as uint8 and its attributes (`rgb`: see `synthetic.render`)."""
    video = synthetic.render(attrs, frames, height, width, rgb)
    return {
        "video": np.round((video + 1.0) * 127.5).astype(np.uint8),
        "caption": attrs.caption(), "image_caption": attrs.caption(video=False), "seed": seed,
        "color": attrs.color, "shape": attrs.shape, "direction": attrs.direction, "background": attrs.background,
        "size": attrs.size, "start": np.asarray(attrs.start, np.float32), "held_out": attrs.held_out,
    }


class Recolor(grain.transforms.RandomMap):
    """Paints the shape of a `share` of records a random colour (`synthetic.random_color`), captioned to match.

    The clip is rendered again from its seed, which fixes every attribute of a record. No recoloured
    clip shows a held-out colour–shape pair, so a stage trained on them has still seen none.
    """

    def __init__(self, share: float):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"The recoloured share is {share}; give a fraction in [0, 1].")
        self.share = share

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        if rng.uniform() >= self.share:
            return record
        seed = int(record["seed"])
        attrs = synthetic.sample_attributes(seed, held_out=bool(record["held_out"]))
        caption = record["caption"].decode() if isinstance(record["caption"], bytes) else record["caption"]
        if attrs.caption() != caption:
            raise ValueError(f"Record {seed} reads {caption!r} but its seed renders {attrs.caption()!r}: "
                             "the dataset was built by another version of data/synthetic.py; build it again.")
        attrs, rgb = synthetic.random_color(attrs, rng)
        return dict(record, **example(attrs, seed, *np.shape(record["video"])[:3], rgb))


def build(data_dir: str, config: str = "tiny") -> None:
    """Render and write the dataset under `data_dir` (a no-op when it is already there)."""
    ShapesVideo(config=config, data_dir=data_dir, file_format="array_record").download_and_prepare()


def source(data_dir: str, split: str, config: str = "tiny"):
    """Random-access source of one split (builds the dataset first if needed); `data_dir` is local or gs://."""
    return tfds.data_source(f"shapes_video/{config}", data_dir=local_data_dir(data_dir, config), split=split)


def local_data_dir(data_dir: str, config: str = "tiny") -> str:
    """A local data dir holding the built dataset: `data_dir` itself, or the local mirror of a gs:// one."""
    if not workdir.is_gcs(data_dir):
        build(data_dir, config)
        return data_dir
    mirror = compile_cache.user_cache_dir() / "tfds" / data_dir[len("gs://"):].strip("/")
    variant = pathlib.PurePosixPath("shapes_video", config, str(ShapesVideo.VERSION))
    local, remote = mirror / variant, workdir.as_path(data_dir) / str(variant)
    complete = remote / "dataset_info.json"  # uploaded last, so its presence means every file is there
    if not local.exists() and complete.exists():
        workdir.download_folder(remote, local)
    build(str(mirror), config)  # a no-op when downloaded
    if not complete.exists():
        for file in sorted(local.iterdir(), key=lambda f: f.name == complete.name):
            workdir.copy_file(file, remote / file.name)
    return str(mirror)
