"""Our loader + Transformer against transformers' ChameleonForConditionalGeneration, in both directions:
checkpoints written by transformers' save_pretrained load into the same logits, and checkpoints written by
save_hf load back into transformers with the same logits and the same image codes."""
import pytest
import torch
import transformers

from chameleon_serve.model.loading import load_checkpoint, save_hf
from chameleon_serve.testing import SMALL_VQ, write_random_checkpoint
from chameleon_serve.tokenizers.train import SPECIAL_TOKENS, build_tokenizer

TEXT_VOCAB = 300


def hf_model(tmp_path, seed=0, **overrides):
    """A random transformers Chameleon saved with save_pretrained (+ the tokenizer.json HF checkpoints carry)."""
    tokenizer = build_tokenizer(["a tiny corpus for a tiny tokenizer"], TEXT_VOCAB + 64 + len(SPECIAL_TOKENS), 64, "scattered")
    config = transformers.ChameleonConfig(
        vocab_size=TEXT_VOCAB + 64 + len(SPECIAL_TOKENS),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=overrides.pop("num_key_value_heads", 4),
        max_position_embeddings=256,
        vq_config=SMALL_VQ.to_hf_dict(),
        vocabulary_map=tokenizer.get_vocab(with_added_tokens=True),
        **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():  # every weight random, QK-norms different per head: nothing is left at 1 or 0
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name and name.endswith("weight") else 0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return model


def text_ids(model):
    image = set(model.model.vocabulary_mapping.image_tokens)
    return torch.tensor([i for i in range(model.config.vocab_size) if i not in image])


def our_logits(loaded, tokens):
    with torch.no_grad():
        return loaded.model.logits(loaded.model(tokens))


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def assert_close(ours, theirs):
    rel = (ours - theirs).abs().max() / theirs.abs().max()
    assert rel < 1e-4, f"relative error {rel:.2e}"


@pytest.mark.parametrize(
    "overrides",
    [{}, {"swin_norm": True}, {"num_key_value_heads": 2}],
    ids=["default-norm-order", "swin-norm", "gqa"],
)
def test_save_pretrained_checkpoint_loads_to_transformers_logits(tmp_path, overrides):
    model = hf_model(tmp_path, **overrides)
    loaded = load_checkpoint(tmp_path, dtype=torch.float32, device="cpu")
    tokens = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    text = text_ids(model)  # transformers sets image-token logits to the dtype minimum
    assert_close(our_logits(loaded, tokens)[..., text], hf_logits(model, tokens)[..., text])
    assert loaded.format == "hf" and loaded.vqgan is not None and not loaded.vqgan.has_decoder


def test_save_pretrained_vq_encoder_gives_transformers_codes(tmp_path):
    model = hf_model(tmp_path)
    loaded = load_checkpoint(tmp_path, device="cpu")
    pixels = torch.rand(2, 3, SMALL_VQ.resolution, SMALL_VQ.resolution, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        theirs = model.model.vqmodel.encode(pixels).image_tokens.view(2, -1)
        assert torch.equal(loaded.vqgan.encode(pixels), theirs)


@pytest.mark.parametrize("shards", [None, 3])
def test_save_hf_output_loads_in_transformers_from_pretrained(tmp_path, shards):
    source = write_random_checkpoint(tmp_path / "random", format="meta", num_kv_heads=2, with_vq_decoder=False)
    loaded = load_checkpoint(source, device="cpu")
    out = save_hf(tmp_path / "hf", loaded.model, loaded.vqgan, loaded.tokenizer_path, num_shards=shards)
    if shards:
        assert len(list(out.glob("model-*-of-00003.safetensors"))) == 3

    model = transformers.ChameleonForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.randint(0, loaded.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    text = text_ids(model)
    assert_close(our_logits(loaded, tokens)[..., text], hf_logits(model, tokens)[..., text])
    pixels = torch.rand(1, 3, SMALL_VQ.resolution, SMALL_VQ.resolution) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.model.vqmodel.encode(pixels).image_tokens.view(1, -1), loaded.vqgan.encode(pixels))
    # special ids are looked up by name in the tokenizer, not HF's defaults
    vocab = model.config.vocabulary_map
    assert (model.config.bos_token_id, model.config.eos_token_id) == (vocab["<s>"], vocab["</s>"])
    assert model.model.vocabulary_mapping.image_token_id == vocab["<reserved08707>"]
