"""Tiny random Chameleon checkpoints in the real on-disk formats, for tests and benchmarks.

    from chameleon_serve.testing import write_random_checkpoint
    path = write_random_checkpoint(tmp_path / "ckpt")                  # HF format, ~0.1M parameters
    path = write_random_checkpoint(tmp_path / "meta", format="meta", meta_model_parallel=2)
    loaded = load_checkpoint(path)

The weights are random (normal, std `init_std`; norm weights near 1), the tokenizer is a real byte-level
BPE trained on a small corpus with Chameleon's special tokens and one `IMGIMG...Z` token per VQ code, and
the files are written by the same writers `chameleon-serve convert` uses. Everything is seeded: the same
arguments give the same checkpoint.

Sizes: parameters ~= 2 * vocab * hidden + layers * (4 * hidden^2 * (1 + kv/heads) / 2 + 3 * hidden * mlp).
The benchmarks' ~10M and ~50M checkpoints: hidden_size=256, num_layers=12 and hidden_size=512, num_layers=16.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Literal

import torch

from .model.config import ChameleonConfig, VQConfig
from .model.loading import save_hf
from .model.meta_format import save_meta
from .model.transformer import Transformer
from .model.vqgan import VQModel
from .tokenizers.train import SPECIAL_TOKENS, build_tokenizer

# Small enough to encode a 32 px image in milliseconds: 2 levels -> a 16x16 grid of codes from 64 entries.
SMALL_VQ = VQConfig(
    resolution=32,
    base_channels=32,
    channel_multiplier=(1, 2),
    num_res_blocks=1,
    latent_channels=32,
    num_embeddings=64,
    embed_dim=32,
)

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A picture of a cat sitting on a red mat. "
    "Chameleon is an early-fusion model: text and image tokens share one transformer. "
    "Describe the image. Here is a drawing of a house with a blue door and two windows. "
    "Hello, world! What is in this photo? It shows a sunset over the sea, with boats. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Questions, answers; lists - and more."
)


def write_random_checkpoint(
    out_dir: str | Path,
    *,
    format: Literal["hf", "meta"] = "hf",
    vocab_text: str | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    swin_norm: bool = False,
    vq: VQConfig | None = SMALL_VQ,
    image_token_layout: Literal["contiguous", "scattered"] = "scattered",
    with_vq_decoder: bool = True,
    seed: int = 0,
    init_std: float = 0.02,
    max_position_embeddings: int = 512,
    meta_model_parallel: int = 1,
    text_corpus: Iterable[str] | None = None,
    text_vocab_size: int = 300,
    hf_num_shards: int | None = None,
) -> Path:
    """Writes a random checkpoint to out_dir and returns the path to pass to load_checkpoint.

    format: "hf" (config.json, safetensors, tokenizer.json) or "meta" (models/7b/..., tokenizer/...).
    vocab_text: extra text the tokenizer is trained on (so its words get merges), added to text_corpus.
    text_corpus: texts to train the BPE on (default: a few built-in English sentences).
    text_vocab_size: BPE entries for text, 256 byte tokens included; the tokenizer adds one token per VQ code and
        Chameleon's special tokens, ids laid out per image_token_layout (see tokenizers.train). The model's
        vocab_size is that total rounded up to a multiple of 64 (the extra rows are never produced by the tokenizer).
    vq: the VQGAN config, or None for a text-only checkpoint. with_vq_decoder=False drops the decoder, as
        HF's converter does.
    intermediate_size: default 8/3 * hidden rounded up to a multiple of 64 (Llama's rule, scaled down).
    meta_model_parallel: shard count of a Meta checkpoint. The QK-norm weights are drawn once per shard
        (the Meta format shares one per shard), so HF and Meta saves of one seed are the same model.
    hf_num_shards: split the HF safetensors into this many files (with an index).
    """
    out_dir = Path(out_dir)
    texts = list(text_corpus) if text_corpus is not None else [DEFAULT_CORPUS]
    if vocab_text:
        texts.append(vocab_text)
    num_codes = vq.num_embeddings if vq is not None else 1  # the tokenizer always has at least one image token
    tokenizer_size = text_vocab_size + num_codes + len(SPECIAL_TOKENS)
    tokenizer = build_tokenizer(texts, tokenizer_size, num_codes, image_token_layout)

    config = ChameleonConfig(
        # padded like the real 65536-row embedding; also lets Meta shards split the vocabulary evenly
        vocab_size=64 * -(-tokenizer_size // 64),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 64 * -(-(8 * hidden_size // 3) // 64),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        swin_norm=swin_norm,
        vq=vq,
    )
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random state
        torch.manual_seed(seed)
        model = random_transformer(config, init_std, qk_norm_groups=meta_model_parallel)
        vqgan = VQModel(vq, with_decoder=with_vq_decoder).eval() if vq is not None else None

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tokenizer_file))
        if format == "hf":
            return save_hf(out_dir, model, vqgan, tokenizer_file, num_shards=hf_num_shards)
        if format == "meta":
            return save_meta(out_dir, model, vqgan, tokenizer_file, model_parallel=meta_model_parallel)
    raise ValueError(f"format must be 'hf' or 'meta', got {format!r}")


@torch.no_grad()
def random_transformer(config: ChameleonConfig, init_std: float = 0.02, qk_norm_groups: int = 1) -> Transformer:
    """A Transformer with normal(0, init_std) weights and norm weights near 1 (biases near 0).

    Built on the meta device and filled tensor by tensor: fast for the ~50M-parameter benchmark models.
    The QK-norm weights are equal within each of `qk_norm_groups` consecutive head groups.
    """
    with torch.device("meta"):
        model = Transformer(config)
    for name, p in list(model.named_parameters()):
        if name.endswith(("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")):
            heads, head_dim = p.shape
            groups = qk_norm_groups if heads % qk_norm_groups == 0 else 1
            value = torch.randn(groups, 1, head_dim).expand(groups, heads // groups, head_dim).reshape(heads, head_dim)
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * value
        elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            value = 1.0 + 0.1 * torch.randn(p.shape)
        else:
            value = init_std * torch.randn(p.shape)
        owner_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner_name), leaf, torch.nn.Parameter(value.contiguous()))
    return model.eval()
