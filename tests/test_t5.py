"""T5 encoder: parity with PyTorch `transformers` through both checkpoint formats, sharding,
tokenizers, loading errors and the prompt-embedding cache."""

import io
import json

import jax
import numpy as np
import pytest
import tensorstore as ts
import torch
import transformers
from conftest import apply_unet, make_inputs
from flax import nnx, serialization
from jax.sharding import PartitionSpec as P

from configs import t5 as t5_configs
from dreamix_jax import checkpoint
from dreamix_jax.models.t5 import (
    ByteTokenizer,
    SentencePieceTokenizer,
    T5Config,
    T5Encoder,
    WordTokenizer,
    checkpoint_names,
    make_tokenizer,
    null_text,
    relative_position_bucket,
    tokenize,
)
from dreamix_jax.sharding import make_mesh
from dreamix_jax.text import TextEncoder, load_encoder

PROMPTS = ["a red circle moving left on a gray background", "a blue square", "sks"]


@pytest.fixture(scope="module")
def cfg():
    return T5Config.from_config(t5_configs.get_config("tiny").model)


@pytest.fixture(scope="module")
def reference(cfg):
    """A random `transformers` T5 v1.1 encoder of the tiny size, every weight perturbed."""
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        layer_norm_epsilon=cfg.eps, tie_word_embeddings=False)
    model = transformers.T5EncoderModel(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Norm scales start at 1 and would hide a missing norm weight; move every weight.
            p.add_(torch.randn_like(p) * (0.3 if "layer_norm" in name else 0.05 * p.std()))
    return model


@pytest.fixture(scope="module")
def batch():
    """A padded batch of byte-tokenised prompts: ids and mask (B, 64)."""
    return tokenize(ByteTokenizer(), PROMPTS, 64)


@pytest.fixture(scope="module")
def expected(reference, batch):
    ids, mask = batch
    with torch.no_grad():
        out = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


@pytest.fixture(scope="module")
def safetensors_dir(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    reference.save_pretrained(path, safe_serialization=True)
    return path


def _write_t5x(reference, directory) -> None:
    """The reference weights as a t5x checkpoint: msgpack `checkpoint` + gzip zarr arrays per tensor."""
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    target = {"token_embedder/embedding": sd["shared.weight"],
              "encoder/relpos_bias/rel_embedding": sd[
                  "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
              "encoder/encoder_norm/scale": sd["encoder.final_layer_norm.weight"]}
    for i in range(reference.config.num_layers):
        pre = f"encoder.block.{i}"
        target[f"encoder/layers_{i}/pre_attention_layer_norm/scale"] = sd[f"{pre}.layer.0.layer_norm.weight"]
        target[f"encoder/layers_{i}/pre_mlp_layer_norm/scale"] = sd[f"{pre}.layer.1.layer_norm.weight"]
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            target[f"encoder/layers_{i}/attention/{ours}/kernel"] = sd[f"{pre}.layer.0.SelfAttention.{theirs}.weight"].T
        for w in ("wi_0", "wi_1", "wo"):
            target[f"encoder/layers_{i}/mlp/{w}/kernel"] = sd[f"{pre}.layer.1.DenseReluDense.{w}.weight"].T
    tree: dict = {}
    for name, array in target.items():
        array = np.ascontiguousarray(array, np.float32)
        if array.ndim == 1:
            leaf = array  # t5x keeps unpartitioned arrays inside the msgpack file
        else:
            rel = "target." + name.replace("/", ".")
            meta = {"compressor": {"id": "gzip"}, "shape": list(array.shape), "chunks": list(array.shape),
                    "dtype": "<f4"}
            store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / rel)},
                             "metadata": meta}, create=True).result()
            store.write(array).result()
            leaf = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": rel},
                    "metadata": meta}
        node = tree
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    payload = {"version": 3, "optimizer": {"target": tree, "state": {"step": np.int32(1000)}}}
    (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(payload))


@pytest.fixture(scope="module")
def t5x_dir(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("t5x") / "checkpoint_1000"
    path.mkdir()
    _write_t5x(reference, path)
    return path


@pytest.fixture(scope="module")
def encode():
    """One jitted forward for every test (recompiled only per sharding)."""
    return jax.jit(lambda graphdef, state, ids, mask: nnx.merge(graphdef, state)(ids, mask), static_argnums=0)


def _load(cfg, path, fmt, mesh_shape=(1, 1, 1)):
    config = t5_configs.get_config("tiny")
    config.checkpoint = dict(path=str(path), format=fmt)
    mesh = make_mesh(mesh_shape, jax.devices()[:int(np.prod(mesh_shape))])
    return load_encoder(config, mesh), mesh


def _run(encode, model, batch, mesh):
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        return np.asarray(encode(graphdef, state, *map(np.asarray, batch)))


# ------------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------------


def test_bucket_matches_transformers(cfg):
    rel = np.arange(-300, 301)
    theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.from_numpy(rel), bidirectional=True, num_buckets=32, max_distance=128).numpy()
    np.testing.assert_array_equal(relative_position_bucket(rel, 32, 128), theirs)


@pytest.mark.parametrize("fmt", ["safetensors", "t5x"])
def test_parity_with_transformers(fmt, cfg, safetensors_dir, t5x_dir, batch, expected, encode):
    model, mesh = _load(cfg, safetensors_dir if fmt == "safetensors" else t5x_dir, fmt)
    out = _run(encode, model, batch, mesh)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-5
    assert np.abs(expected).mean() > 0.1  # a real signal, not zeros


def test_sharded_safetensors_index(cfg, reference, batch, expected, encode, tmp_path):
    reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, mesh = _load(cfg, tmp_path, "safetensors")
    assert np.abs(_run(encode, model, batch, mesh) - expected).max() <= 1e-5


def test_sharded_encoder_matches(cfg, safetensors_dir, batch, expected, encode):
    model, mesh = _load(cfg, safetensors_dir, "safetensors", mesh_shape=(2, 2, 2))
    query = model.layers[0].attention.query.kernel[...]
    assert query.sharding.spec == P("fsdp", "tensor", None)
    assert model.token_embedding.embedding[...].sharding.spec == P("tensor", "fsdp")
    # Each device holds only its block of the query kernel.
    assert {s.data.shape for s in query.addressable_shards} == {(cfg.d_model // 2, cfg.num_heads // 2, cfg.head_dim)}
    assert np.abs(_run(encode, model, batch, mesh) - expected).max() <= 1e-5


def test_bfloat16_compute_stays_close(cfg, safetensors_dir, batch, expected, encode):
    config = t5_configs.get_config("tiny")
    config.model.dtype = "bfloat16"
    config.checkpoint = dict(path=str(safetensors_dir), format="safetensors")
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    out = _run(encode, load_encoder(config, mesh), batch, mesh)
    assert out.dtype == np.float32
    assert np.abs(out - expected).max() < 0.1


# ------------------------------------------------------------------------------------------------
# Loading errors.
# ------------------------------------------------------------------------------------------------


def _tensors(reference):
    return {k: checkpoint._InlineTensor(v.numpy()) for k, v in reference.state_dict().items()}


def test_missing_tensor_is_named(cfg, reference):
    tensors = _tensors(reference)
    del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    abstract = nnx.state(nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0))))
    with pytest.raises(KeyError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight is missing.*\(32, 64\)"):
        checkpoint.load_weights(abstract, checkpoint_names(cfg, "safetensors"), tensors, make_mesh((1, 1, 1), jax.devices()[:1]))


def test_misshapen_tensor_is_named(cfg, reference):
    tensors = _tensors(reference)
    tensors["encoder.block.0.layer.0.SelfAttention.q.weight"] = checkpoint._InlineTensor(np.zeros((32, 16), np.float32))
    abstract = nnx.state(nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"q\.weight has shape \(32, 16\); expected \(32, 32\)"):
        checkpoint.load_weights(abstract, checkpoint_names(cfg, "safetensors"), tensors, make_mesh((1, 1, 1), jax.devices()[:1]))


def test_missing_checkpoint_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        checkpoint.open_checkpoint(tmp_path, "safetensors")
    with pytest.raises(FileNotFoundError, match="'checkpoint' msgpack"):
        checkpoint.open_checkpoint(tmp_path, "t5x")
    with pytest.raises(ValueError, match="Unknown checkpoint format"):
        checkpoint.open_checkpoint(tmp_path, "pickle")


# ------------------------------------------------------------------------------------------------
# Tokenizers.
# ------------------------------------------------------------------------------------------------


def test_byte_tokenizer_and_truncation(caplog):
    assert ByteTokenizer().encode("hé") == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 1]
    ids, mask = tokenize(ByteTokenizer(), ["abc", "a much longer prompt"], 6)
    np.testing.assert_array_equal(ids[0], [100, 101, 102, 1, 0, 0])
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0])
    assert ids[1, -1] == 1 and mask[1].all()  # truncated, EOS kept
    assert "truncated to max_length=6" in caplog.text


def test_word_tokenizer_gives_caption_words_one_id_and_spells_other_words_in_bytes():
    tokenizer = make_tokenizer(t5_configs.get_config("tiny").tokenizer)
    caption = tokenizer.encode("a red circle moving left on a gray background")
    assert len(caption) == 10 and caption[-1] == 1 and min(caption[:-1]) >= ByteTokenizer.vocab_size
    assert caption[0] == caption[6]  # both "a"
    assert tokenizer.encode("A  RED") == caption[:2] + [1]  # case and spacing do not matter
    # "sks" is not in the grammar: its bytes and a space byte, so two unknown words stay apart.
    assert tokenizer.encode("sks moving") == [ord("s") + 3, ord("k") + 3, ord("s") + 3, ord(" ") + 3, caption[3], 1]
    assert tokenizer.vocab_size <= t5_configs.get_config("tiny").model.vocab_size
    assert WordTokenizer(["a", "b"]).name != WordTokenizer(["a", "c"]).name  # cache keys see the vocabulary
    with pytest.raises(ValueError, match="distinct single words"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="distinct single words"):
        WordTokenizer(["two words"])


def _train_spiece(path, vocab_size=32, **ids):
    """A small SentencePiece model trained here (`ids` sets its special ids)."""
    import sentencepiece

    model = io.BytesIO()
    sentences = [f"a {c} {s} moving {d} on a {b} background" for c in ("red", "green", "blue", "yellow")
                 for s in ("circle", "square", "triangle") for d in ("left", "right", "up", "down")
                 for b in ("gray", "white", "black")]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="unigram", minloglevel=2, **ids)
    path.write_bytes(model.getvalue())
    return path


def test_sentencepiece_follows_t5_conventions(tmp_path):
    import sentencepiece

    path = _train_spiece(tmp_path / "spiece.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    ours, raw = SentencePieceTokenizer(path), sentencepiece.SentencePieceProcessor(model_file=str(path))
    text = "a red circle moving left on a gray background"
    assert ours.encode(text) == raw.encode(text) + [1]  # EOS appended, no BOS
    ids, mask = tokenize(ours, [text, "zebra"], 40)
    assert ids.shape == (2, 40) and ids[0, mask[0].sum() - 1] == 1 and (ids[~mask] == 0).all()
    assert ours.name.startswith("spiece-") and ours.name != SentencePieceTokenizer(
        _train_spiece(tmp_path / "other.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, vocab_size=30)).name


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    # SentencePiece's own defaults (unk 0, bos 1, eos 2, no pad) are not T5's.
    with pytest.raises(ValueError, match="not a T5 vocabulary"):
        SentencePieceTokenizer(_train_spiece(tmp_path / "default.model"))


def test_null_condition_reads_no_prompt(tiny_config, perturbed_model):
    """Under the null condition's all-False mask the U-Net ignores whatever the text holds."""
    graphdef, state = perturbed_model
    x, logsnr, text, _ = make_inputs(tiny_config, batch=2)
    null, mask = null_text(2, text.shape[1], text.shape[2])
    assert not np.asarray(null).any() and not np.asarray(mask).any()
    out_null = apply_unet(graphdef, state, x, logsnr, null, mask.astype(np.float32))
    out_text = apply_unet(graphdef, state, x, logsnr, text, mask.astype(np.float32))
    assert np.isfinite(np.asarray(out_null)).all()
    np.testing.assert_allclose(out_null, out_text, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Prompt-embedding cache.
# ------------------------------------------------------------------------------------------------


def test_cache_skips_the_encoder(cfg, safetensors_dir, expected, tmp_path):
    model, mesh = _load(cfg, safetensors_dir, "safetensors", mesh_shape=(-1, 1, 1))
    first = TextEncoder(model, ByteTokenizer(), 64, mesh, cache_dir=tmp_path)
    emb, mask = first(PROMPTS + PROMPTS[:1])  # a repeated prompt is encoded once
    assert first.encoded_prompts == len(PROMPTS)
    assert np.abs(emb[:3] - expected).max() <= 1e-5
    np.testing.assert_array_equal(emb[3], emb[0])
    assert len(list(tmp_path.glob("*.npz"))) == len(PROMPTS) and not list(tmp_path.glob("*.tmp"))

    second = TextEncoder(model, ByteTokenizer(), 64, mesh, cache_dir=tmp_path)
    second._encode = None  # any encoder call would now fail
    emb2, mask2 = second(list(reversed(PROMPTS)))
    assert second.encoded_prompts == 0
    np.testing.assert_array_equal(emb2, emb[:3][::-1])
    np.testing.assert_array_equal(mask2, mask[:3][::-1])

    # Other weights have another fingerprint, so they never read these embeddings.
    other = TextEncoder(T5Encoder(cfg, rngs=nnx.Rngs(1)), ByteTokenizer(), 64, mesh, cache_dir=tmp_path)
    assert other.fingerprint != first.fingerprint
    assert other.cache_key(PROMPTS[0]) != first.cache_key(PROMPTS[0])
    assert first.cache_key(PROMPTS[0]) != TextEncoder(model, ByteTokenizer(), 32, mesh).cache_key(PROMPTS[0])


def test_t5x_reads_gcs_paths_through_tensorstore():
    assert checkpoint._kvstore("gs://t5-data/models/xxl/checkpoint_1000000") == {
        "driver": "gcs", "bucket": "t5-data", "path": "models/xxl/checkpoint_1000000/"}
    assert checkpoint._kvstore("/ckpt/xxl")["path"] == "/ckpt/xxl/"
