r"""T5 v1.1 text-encoder configs: a tiny one for the synthetic captions and the public v1.1 sizes.

  tiny    2 layers, 32 wide; the tests' and the shipped cascade's encoder. Its tokenizer gives each
          word of the synthetic captions' grammar one id and spells any other word in bytes.
  small, base, large, xl, xxl
          the T5 v1.1 encoders (vocab 32128, SentencePiece). Imagen Video uses xxl: 4096 wide,
          24 layers, 64 heads × 64, gated-GELU MLP 10240.

Real weights are read from a Hugging Face or t5x checkpoint (see the README), e.g.

  python -c "from configs import t5; print(t5.get_config('xxl'))"
  --config.text.checkpoint.path=/ckpt/t5-v1_1-xxl --config.text.checkpoint.format=safetensors \
  --config.text.tokenizer.path=/ckpt/t5-v1_1-xxl/spiece.model

Compile-time memory of the xxl encoder on the emulated mesh (and a TPU topology with libtpu):

  python benchmarks/t5_memory.py
"""

import ml_collections

from configs import common
from dreamix_jax.data import synthetic

# The synthetic captions' grammar ("a red circle moving left on a gray background"): one token a word.
CAPTION_WORDS = ("a", "on", "background", "moving", "standing", *synthetic.COLORS, *synthetic.SHAPES,
                 *synthetic.DIRECTIONS, *synthetic.BACKGROUNDS)

# (d_model, num_heads, num_layers, mlp_dim); head_dim is 64 throughout v1.1.
SIZES = {
    "small": (512, 6, 8, 1024),
    "base": (768, 12, 12, 2048),
    "large": (1024, 16, 24, 2816),
    "xl": (2048, 32, 24, 5120),
    "xxl": (4096, 64, 24, 10240),
}
VARIANTS = ("tiny", *SIZES)


def get_config(arg: str | None = "tiny") -> ml_collections.ConfigDict:
    """Config for one T5 encoder; `arg` is a variant name."""
    arg = common.parse_arg(arg, variant="tiny")
    if arg.variant not in VARIANTS:
        raise ValueError(f"Unknown T5 variant {arg.variant!r}; choose one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.variant = arg.variant

    if arg.variant == "tiny":
        config.model = dict(vocab_size=384, d_model=32, num_heads=4, head_dim=8, num_layers=2, mlp_dim=64)
        config.tokenizer = dict(kind="words", words=CAPTION_WORDS, path="")
        config.max_length = 32  # a caption is 10 tokens with EOS; a word outside the grammar costs its bytes + 1
    else:
        d_model, heads, layers, mlp = SIZES[arg.variant]
        config.model = dict(vocab_size=32128, d_model=d_model, num_heads=heads, head_dim=64,
                            num_layers=layers, mlp_dim=mlp, param_dtype="float32", dtype="bfloat16")
        config.tokenizer = dict(kind="sentencepiece", path="")  # the checkpoint's spiece.model
        config.max_length = 128
    config.model.dropout = 0.0  # frozen in Dreamix

    # Weights: a `safetensors` file or directory, or a t5x `checkpoint_<step>` directory.
    # An empty path initialises randomly from `seed` (tests, memory checks).
    config.checkpoint = dict(path="", format="safetensors")
    config.seed = 0
    config.batch_size = 8  # prompts per encoder call (rounded up to the data-parallel size)
    return config
