"""The VQGAN: same codes as transformers' ChameleonVQVAE, taming key layout, decoding, training forward."""
import pytest
import torch

from chameleon_serve.model.config import VQConfig
from chameleon_serve.model.vqgan import VQModel

TINY = VQConfig(
    resolution=32,
    base_channels=32,
    channel_multiplier=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),  # attention at the lowest resolution as well as in the mid block
    latent_channels=32,
    num_embeddings=64,
    embed_dim=16,
)


def random_images(batch: int, resolution: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1


def hf_vqvae(cfg: VQConfig, seed: int = 0):
    import transformers.models.chameleon.modeling_chameleon as transformers_chameleon
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig

    torch.manual_seed(seed)
    hf_cfg = {k: v for k, v in cfg.to_hf_dict().items() if k != "model_type"}
    model = transformers_chameleon.ChameleonVQVAE(ChameleonVQVAEConfig(**hf_cfg)).eval()
    with torch.no_grad():  # random weights large enough that the codes vary across the image
        for p in model.parameters():
            p.normal_(0, 0.3 if p.dim() > 1 else 0.05)
    return model


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=2,
                 attn_resolutions=(16,), latent_channels=64, num_embeddings=64, embed_dim=32),
    ],
)
def test_codes_match_transformers_chameleon_vqvae(cfg):
    hf = hf_vqvae(cfg)
    ours = VQModel(cfg, with_decoder=False)
    ours.load_state_dict(hf.state_dict())  # strict: HF's model.vqmodel.* names are ours
    pixels = random_images(3, cfg.resolution)
    with torch.inference_mode():
        expected = hf.encode(pixels).image_tokens.view(3, -1)
        codes = ours.encode(pixels)
    assert codes.shape == (3, cfg.grid_size**2)
    assert codes.dtype == torch.long
    assert len(codes.unique()) > cfg.num_embeddings // 4, "random weights should use many codes"
    assert torch.equal(codes, expected)


def test_taming_key_layout():
    keys = set(VQModel(TINY).state_dict())
    for key in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.2.block.0.nin_shortcut.weight",  # 32 -> 64 channels
        "encoder.down.2.attn.0.q.weight",
        "encoder.mid.block_1.conv1.weight",
        "encoder.mid.attn_1.proj_out.weight",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "quantize.embedding.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid.block_2.norm2.bias",
        "decoder.up.2.block.1.conv2.weight",  # num_res_blocks + 1 blocks per level
        "decoder.up.2.attn.1.k.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",  # 64 -> 32 channels, built from the deepest level down
        "decoder.up.2.upsample.conv.weight",
        "decoder.norm_out.weight",
        "decoder.conv_out.weight",
    ]:
        assert key in keys, key
    assert not any(k.startswith("encoder.down.2.downsample") or k.startswith("decoder.up.0.upsample") for k in keys)
    assert not any(k.startswith("encoder.down.0.attn") for k in keys)  # no attention at 32 px
    assert not any(k.startswith("decoder.") for k in VQModel(TINY, with_decoder=False).state_dict())


def test_decode_size_and_batching():
    model = VQModel(TINY).eval()
    codes = torch.randint(0, TINY.num_embeddings, (3, TINY.image_tokens), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batch = model.decode(codes)
        one = model.decode(codes[1:2])
    assert batch.shape == (3, 3, TINY.resolution, TINY.resolution)
    torch.testing.assert_close(batch[1:2], one, atol=1e-5, rtol=1e-5)


def test_encode_is_deterministic_for_a_constant_image():
    model = VQModel(TINY).eval()
    grey = torch.full((1, 3, 32, 32), 0.25)
    with torch.inference_mode():
        first, second = model.encode(grey), model.encode(grey)
        in_batch = model.encode(torch.cat([random_images(1, 32), grey]))[1:]
    assert torch.equal(first, second)
    assert torch.equal(first, in_batch)


def test_embed_codes_is_the_codebook_in_grid_order():
    model = VQModel(TINY)
    codes = torch.arange(TINY.image_tokens)[None] % TINY.num_embeddings  # [1, 64]
    z_q = model.embed_codes(codes)
    g = TINY.grid_size
    assert z_q.shape == (1, TINY.embed_dim, g, g)
    # row-major: code index r*g + c sits at grid row r, column c
    torch.testing.assert_close(z_q[0, :, 2, 5], model.quantize.embedding.weight[(2 * g + 5) % TINY.num_embeddings])


def test_training_forward_straight_through_and_commitment_loss():
    model = VQModel(TINY)
    recon, vq_loss, codes = model(random_images(2, 32))
    assert recon.shape == (2, 3, 32, 32) and codes.shape == (2, TINY.image_tokens) and vq_loss.dim() == 0
    # The reconstruction loss alone must reach the encoder: only possible through the straight-through estimator.
    recon.pow(2).mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # codebook is learned from vq_loss, not the reconstruction
    model.zero_grad()
    model(random_images(2, 32))[1].backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0


def test_vq_loss_is_codebook_plus_quarter_commitment():
    model = VQModel(TINY)
    pixels = random_images(1, 32)
    z, codes = model.quantize_latents(pixels)
    mse = (model.embed_codes(codes) - z).pow(2).mean()
    _, vq_loss, _ = model(pixels)
    torch.testing.assert_close(vq_loss, 1.25 * mse)


def test_errors():
    with pytest.raises(ValueError, match="multiples of 32"):
        VQModel(VQConfig(base_channels=48, channel_multiplier=(1, 2), resolution=32))
    encoder_only = VQModel(TINY, with_decoder=False)
    with pytest.raises(RuntimeError, match="no decoder"):
        encoder_only.decode(torch.zeros(1, TINY.image_tokens, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        encoder_only.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="codes must lie"):
        encoder_only.embed_codes(torch.full((1, TINY.image_tokens), TINY.num_embeddings))
