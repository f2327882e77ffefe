"""load_checkpoint: both formats give the same model, Meta's conventions are honoured, bad input gets one clear
CheckpointError naming the file or key, and host memory stays near one copy of the weights."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from chameleon_serve.model.config import CheckpointError
from chameleon_serve.model.loading import load_checkpoint, save_hf
from chameleon_serve.model.meta_format import save_meta
from chameleon_serve.testing import SMALL_VQ, write_random_checkpoint

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64, 1, 33]])


def logits(loaded, tokens=TOKENS):
    with torch.no_grad():
        return loaded.model.logits(loaded.model(tokens))


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("hf"), num_kv_heads=2)


# ------------------------------------------------------------------------------------------- same weights


def test_same_weights_in_every_layout_load_to_identical_logits(hf_ckpt, tmp_path):
    reference = load_checkpoint(hf_ckpt, device="cpu")
    args = (reference.model, reference.vqgan, reference.tokenizer_path)
    layouts = {
        "hf-sharded": save_hf(tmp_path / "hf3", *args, num_shards=3),
        "hf-max-bytes": save_hf(tmp_path / "hfmax", *args, max_shard_bytes=100_000),
        "meta-mp1": save_meta(tmp_path / "meta1", *args, model_parallel=1),
        "meta-mp2": save_meta(tmp_path / "meta2", *args, model_parallel=2),
    }
    assert len(list((tmp_path / "hf3").glob("model-*.safetensors"))) == 3
    assert len(list((tmp_path / "hfmax").glob("model-*.safetensors"))) > 3
    assert [p.name for p in sorted((tmp_path / "meta2/models/7b").glob("*.pth"))] == ["consolidated.00.pth", "consolidated.01.pth"]
    expected = logits(reference)
    for name, path in layouts.items():
        loaded = load_checkpoint(path, device="cpu")
        assert loaded.format == name.split("-")[0]
        assert loaded.config == reference.config, name
        assert torch.equal(logits(loaded), expected), name
        for (key, ours), theirs in zip(loaded.model.state_dict().items(), reference.model.state_dict().values()):
            assert torch.equal(ours, theirs), (name, key)


def test_meta_shards_split_each_weight_along_its_parallel_dimension(hf_ckpt, tmp_path):
    ref = load_checkpoint(hf_ckpt, device="cpu")
    save_meta(tmp_path, ref.model, ref.vqgan, ref.tokenizer_path, model_parallel=2)
    s0 = torch.load(tmp_path / "models/7b/consolidated.00.pth", weights_only=True)
    c = ref.config
    assert s0["tok_embeddings.weight"].shape == (c.vocab_size, c.hidden_size // 2)  # hidden split
    assert s0["output.weight"].shape == (c.vocab_size // 2, c.hidden_size)  # vocabulary split
    assert s0["layers.0.attention.wq.weight"].shape == (c.hidden_size // 2, c.hidden_size)
    assert s0["layers.0.attention.wk.weight"].shape == (c.num_key_value_heads * c.head_dim // 2, c.hidden_size)
    assert s0["layers.0.attention.wo.weight"].shape == (c.hidden_size, c.hidden_size // 2)
    assert s0["layers.0.feed_forward.w1.weight"].shape == (c.intermediate_size // 2, c.hidden_size)
    assert s0["layers.0.feed_forward.w2.weight"].shape == (c.hidden_size, c.intermediate_size // 2)
    assert s0["layers.0.attention.q_normalization.weight"].shape == (c.head_dim,)  # one per shard
    assert s0["norm.weight"].shape == (c.hidden_size,)
    params = json.loads((tmp_path / "models/7b/params.json").read_text())["model"]
    assert (params["dim"], params["n_heads"], params["n_kv_heads"]) == (c.hidden_size, 4, 2)


def meta_reference_logits(model_dir, tokens):
    """Meta's forward pass written directly from its shards: interleaved (complex) RoPE, one QK LayerNorm per
    shard applied to that shard's heads. Independent of our key mapping and permutations."""
    params = json.loads((model_dir / "params.json").read_text())["model"]
    shards = [torch.load(p, weights_only=True) for p in sorted(model_dir.glob("consolidated*.pth"))]
    n, heads, kv_heads, dim = len(shards), params["n_heads"], params["n_kv_heads"], params["dim"]
    hd = dim // heads

    def cat(key, d):
        return torch.cat([s[key] for s in shards], dim=d)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + params["norm_eps"]))

    def rope(x):  # x: [T, h, hd]; pairs (x[2i], x[2i+1]) rotate by position * theta^(-2i/hd)
        freqs = 1.0 / params["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
        angles = torch.outer(torch.arange(x.shape[0]).float(), freqs)
        rotated = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * torch.polar(torch.ones_like(angles), angles)[:, None]
        return torch.view_as_real(rotated).flatten(-2)

    def qk_norm(x, key, h):  # shard r's LayerNorm for its h // n heads
        parts = x.split(h // n, dim=1)
        return torch.cat([F.layer_norm(p, (hd,), s[key + ".weight"], s[key + ".bias"]) for p, s in zip(parts, shards)], 1)

    x = cat("tok_embeddings.weight", 1)[tokens[0]]
    T = x.shape[0]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        h_in = rms(x, shards[0][p + "attention_norm.weight"])
        q = qk_norm((h_in @ cat(p + "attention.wq.weight", 0).T).view(T, heads, hd), p + "attention.q_normalization", heads)
        k = qk_norm((h_in @ cat(p + "attention.wk.weight", 0).T).view(T, kv_heads, hd), p + "attention.k_normalization", kv_heads)
        v = (h_in @ cat(p + "attention.wv.weight", 0).T).view(T, kv_heads, hd)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        att = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
        x = x + att.transpose(0, 1).reshape(T, dim) @ cat(p + "attention.wo.weight", 1).T
        h_in = rms(x, shards[0][p + "ffn_norm.weight"])
        mlp = F.silu(h_in @ cat(p + "feed_forward.w1.weight", 0).T) * (h_in @ cat(p + "feed_forward.w3.weight", 0).T)
        x = x + mlp @ cat(p + "feed_forward.w2.weight", 1).T
    return rms(x, shards[0]["norm.weight"]) @ cat("output.weight", 0).T


@pytest.mark.parametrize("parallel", [1, 2])
def test_meta_checkpoint_matches_metas_own_forward_pass(tmp_path, parallel):
    # different QK-norm weights per shard (the format allows one per shard) catch a wrong expansion to heads
    root = write_random_checkpoint(tmp_path, format="meta", num_kv_heads=2, meta_model_parallel=parallel, seed=3)
    loaded = load_checkpoint(root, device="cpu")
    expected = meta_reference_logits(root / "models/7b", TOKENS)
    assert torch.allclose(logits(loaded)[0], expected, atol=1e-5, rtol=1e-4)


def test_per_head_qk_norms_cannot_be_written_as_one_per_shard(tmp_path):
    ref = load_checkpoint(write_random_checkpoint(tmp_path / "hf"), device="cpu")
    with torch.no_grad():
        ref.model.layers[1].self_attn.k_norm.weight[0] += 1.0
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.k_norm\.weight.*one layers\.1\.attention\.k_normalization"):
        save_meta(tmp_path / "meta", ref.model, ref.vqgan, ref.tokenizer_path)


# ------------------------------------------------------------------------------------------- VQGAN


def test_separate_vqgan_ckpt_adds_the_decoder_and_keeps_the_codes(tmp_path):
    with_decoder = write_random_checkpoint(tmp_path / "meta", format="meta", with_vq_decoder=True)
    hf_without = write_random_checkpoint(tmp_path / "hf", format="hf", with_vq_decoder=False)
    pixels = torch.rand(2, 3, SMALL_VQ.resolution, SMALL_VQ.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1

    plain = load_checkpoint(hf_without, device="cpu")
    assert plain.vqgan is not None and not plain.vqgan.has_decoder
    added = load_checkpoint(hf_without, vqgan_path=with_decoder / "tokenizer/vqgan.ckpt", device="cpu")
    assert added.vqgan.has_decoder
    original = load_checkpoint(with_decoder, device="cpu")
    with torch.no_grad():
        assert torch.equal(added.vqgan.encode(pixels), plain.vqgan.encode(pixels))
        codes = original.vqgan.encode(pixels)
        assert torch.equal(added.vqgan.decode(codes), original.vqgan.decode(codes))
        assert added.vqgan.decode(codes).shape == (2, 3, SMALL_VQ.resolution, SMALL_VQ.resolution)
    # a folder holding vqgan.ckpt + vqgan.yaml works too
    assert load_checkpoint(hf_without, vqgan_path=with_decoder / "tokenizer", device="cpu").vqgan.has_decoder


def test_vq_codes_survive_conversion_both_ways(tmp_path):
    meta = write_random_checkpoint(tmp_path / "meta", format="meta")
    a = load_checkpoint(meta, device="cpu")
    b = load_checkpoint(save_hf(tmp_path / "hf", a.model, a.vqgan, a.tokenizer_path), device="cpu")
    c = load_checkpoint(save_meta(tmp_path / "back", b.model, b.vqgan, b.tokenizer_path), device="cpu")
    pixels = torch.rand(1, 3, SMALL_VQ.resolution, SMALL_VQ.resolution) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.vqgan.encode(pixels), b.vqgan.encode(pixels))
        assert torch.equal(a.vqgan.encode(pixels), c.vqgan.encode(pixels))
    assert b.vqgan.has_decoder and c.vqgan.has_decoder and b.config.vq == SMALL_VQ


def test_vqgan_with_another_codebook_is_refused(tmp_path):
    hf = write_random_checkpoint(tmp_path / "hf", with_vq_decoder=False)
    other = write_random_checkpoint(tmp_path / "meta", format="meta", vq=SMALL_VQ.__class__(**{**vars(SMALL_VQ), "num_embeddings": 128}))
    with pytest.raises(CheckpointError, match="vqgan.ckpt: VQGAN config .* does not match"):
        load_checkpoint(hf, vqgan_path=other / "tokenizer/vqgan.ckpt", device="cpu")


def test_text_only_checkpoints_load_without_a_vqgan(tmp_path):
    for fmt in ("hf", "meta"):
        loaded = load_checkpoint(write_random_checkpoint(tmp_path / fmt, format=fmt, vq=None), device="cpu")
        assert loaded.vqgan is None and loaded.config.vq is None


# ------------------------------------------------------------------------------------------- options


def test_dtype_choices_and_the_vqgan_staying_float32(hf_ckpt, tmp_path):
    loaded = load_checkpoint(hf_ckpt, device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}  # CPU default
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    half = load_checkpoint(hf_ckpt, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.vqgan.parameters()} == {torch.float32}
    stored_bf16 = save_hf(tmp_path, half.model, half.vqgan, half.tokenizer_path)
    assert {p.dtype for p in load_checkpoint(stored_bf16, dtype="auto", device="cpu").model.parameters()} == {torch.bfloat16}
    assert json.loads((stored_bf16 / "config.json").read_text())["dtype"] == "bfloat16"


def test_meta_checkpoint_is_found_from_root_model_dir_or_params_file(tmp_path):
    root = write_random_checkpoint(tmp_path / "release", format="meta")
    for path in (root, root / "models/7b", root / "models/7b/params.json"):
        loaded = load_checkpoint(path, device="cpu")
        assert (loaded.format, loaded.name) == ("meta", "release")
        assert loaded.tokenizer_path == root / "tokenizer/text_tokenizer.json"
    assert loaded.num_parameters == sum(p.numel() for p in loaded.model.parameters())


def test_progress_bar_and_summary_log(hf_ckpt, capsys, caplog):
    caplog.set_level("INFO", logger="chameleon_serve.model.loading")
    load_checkpoint(hf_ckpt, device="cpu", progress=True)
    assert "loading" in capsys.readouterr().err
    assert any("parameters, float32 on cpu in" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- broken checkpoints


def rewrite_safetensors(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_unknown_format_says_what_was_looked_for(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json.*params\.json or models/<size>/params\.json"):
        load_checkpoint(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nowhere", device="cpu")


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json"])
def test_hf_missing_file_is_named(tmp_path, missing):
    root = write_random_checkpoint(tmp_path)
    (root / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_checkpoint(root, device="cpu")


def test_hf_missing_shard_is_named(tmp_path):
    root = write_random_checkpoint(tmp_path, hf_num_shards=2)
    (root / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: file not found"):
        load_checkpoint(root, device="cpu")


def test_hf_missing_key_is_named(tmp_path):
    root = write_random_checkpoint(tmp_path)
    rewrite_safetensors(root / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing key 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_checkpoint(root, device="cpu")


def test_hf_unexpected_key_is_named(tmp_path):
    root = write_random_checkpoint(tmp_path)
    rewrite_safetensors(root / "model.safetensors", lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.9\.mlp\.up_proj\.weight'"):
        load_checkpoint(root, device="cpu")


def test_hf_wrong_shape_names_key_expected_and_found(tmp_path):
    root = write_random_checkpoint(tmp_path, hidden_size=64)
    rewrite_safetensors(root / "model.safetensors", lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' .*expected \[64\], found \[65\]"):
        load_checkpoint(root, device="cpu")


def test_hf_vq_key_problems_are_named_too(tmp_path):
    root = write_random_checkpoint(tmp_path)
    rewrite_safetensors(root / "model.safetensors", lambda t: t.pop("model.vqmodel.quant_conv.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.vqmodel\.quant_conv\.weight'"):
        load_checkpoint(root, device="cpu")


def test_unparseable_config_and_missing_field_are_named(tmp_path):
    root = write_random_checkpoint(tmp_path)
    config = json.loads((root / "config.json").read_text())
    del config["hidden_size"]
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: missing required field 'hidden_size'"):
        load_checkpoint(root, device="cpu")
    (root / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(root, device="cpu")


def test_meta_missing_key_unexpected_key_and_wrong_shape_name_shard_and_key(tmp_path):
    root = write_random_checkpoint(tmp_path, format="meta", meta_model_parallel=2)
    shard = root / "models/7b/consolidated.01.pth"
    original = torch.load(shard, weights_only=True)

    broken = dict(original)
    del broken["layers.0.feed_forward.w3.weight"]
    torch.save(broken, shard)
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: missing key 'layers\.0\.feed_forward\.w3\.weight'"):
        load_checkpoint(root, device="cpu")

    torch.save({**original, "layers.0.attention.wqkv.weight": torch.zeros(1)}, shard)
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: unexpected key 'layers\.0\.attention\.wqkv\.weight'"):
        load_checkpoint(root, device="cpu")

    torch.save({**original, "output.weight": original["output.weight"][:-1]}, shard)
    with pytest.raises(CheckpointError, match=r"'output\.weight' in .*consolidated\.01\.pth: expected \[\d+, 64\], found"):
        load_checkpoint(root, device="cpu")


@pytest.mark.parametrize(
    "missing, message",
    [
        ("models/7b/consolidated.pth", r"looked for consolidated\.pth and consolidated\.NN\.pth"),
        ("tokenizer/text_tokenizer.json", r"text_tokenizer\.json: file not found"),
        ("tokenizer/vqgan.yaml", r"vqgan\.yaml: file not found"),
    ],
)
def test_meta_missing_file_is_named(tmp_path, missing, message):
    root = write_random_checkpoint(tmp_path, format="meta")
    (root / missing).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(root, device="cpu")


def test_meta_broken_yaml_params_and_shard_count_are_named(tmp_path):
    root = write_random_checkpoint(tmp_path, format="meta", meta_model_parallel=2)
    (root / "models/7b/consolidate_params.json").write_text('{"model_parallel_size": 4}')
    with pytest.raises(CheckpointError, match=r"model_parallel_size 4, but 2 shard files"):
        load_checkpoint(root, device="cpu")
    (root / "models/7b/consolidate_params.json").write_text('{"model_parallel_size": 2}')
    (root / "tokenizer/vqgan.yaml").write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match=r"vqgan\.yaml: not valid YAML"):
        load_checkpoint(root, device="cpu")
    (root / "models/7b/consolidated.01.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: cannot read torch checkpoint"):
        load_checkpoint(root, device="cpu")


# ------------------------------------------------------------------------------------------- memory


# Peak RSS of the child's own address space (VmHWM): ru_maxrss would carry over the parent's peak.
MEASURE = textwrap.dedent(
    """
    import sys, torch
    from chameleon_serve.model.loading import load_checkpoint
    def status_kib(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
    with torch.device("meta"):  # meta-device init imports ~70 MB of torch modules once: a fixed cost, not weights
        torch.nn.Embedding(1, 1)
    before = status_kib("VmRSS")
    loaded = load_checkpoint(sys.argv[1], device="cpu", dtype=torch.float32)
    print((status_kib("VmHWM") - before) * 1024)
    """
)


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_peak_host_memory_is_near_one_copy_of_the_weights(tmp_path, fmt):
    # ~110 MB of float32 weights in 8 layers: the largest layer is ~14 MB
    root = write_random_checkpoint(
        tmp_path, format=fmt, hidden_size=512, num_heads=8, intermediate_size=1536, num_layers=8,
        meta_model_parallel=2, vq=None,
    )
    size = sum(f.stat().st_size for f in root.rglob("*") if f.suffix in (".safetensors", ".pth"))
    assert size > 100e6
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.split()[-1])
    assert growth < 1.25 * size, f"peak RSS grew {growth / 1e6:.0f} MB for {size / 1e6:.0f} MB of weights"
