"""The VQGAN image tokenizer ("Make-a-Scene" style) in plain PyTorch.

An image [B, 3, R, R] in [-1, 1] goes through a convolutional encoder to a latent grid
[B, z, g, g] (g = R / 2**(levels-1)), a 1x1 `quant_conv` to [B, embed_dim, g, g], and a
nearest-codebook lookup (L2) to g*g integer codes per image, read row-major. Decoding embeds the
codes, applies `post_quant_conv` and a mirrored convolutional decoder back to pixels.

Module names follow the taming-transformers layout exactly, which is also what HF checkpoints carry
under `model.vqmodel.`: a Meta `vqgan.ckpt` state dict (minus its training-only `loss.*` keys) and an
HF `model.vqmodel.*` state dict (prefix stripped) load with plain `load_state_dict`.
HF conversions usually drop the decoder, so `with_decoder=False` builds the encoder side only.

The VQGAN always runs in float32, as in the reference code: callers should not cast it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VQConfig

COMMITMENT_BETA = 0.25  # weight of the commitment term in the VQ loss, as in VQ-VAE / taming


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv, twice, plus a residual (through a 1x1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1 convs as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # [B, HW, C]
        k = self.k(h).reshape(B, C, H * W)  # [B, C, HW]
        v = self.v(h).reshape(B, C, H * W).transpose(1, 2)  # [B, HW, C]
        # Scale after the product (not before) to stay bit-close to the reference encoder:
        # codes are an argmin, so tiny numeric drift can flip a code.
        weights = torch.softmax(torch.bmm(q, k) * C**-0.5, dim=-1)  # [B, HW(query), HW(key)]
        out = torch.bmm(weights, v).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one, then a stride-2 3x3 conv (taming's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    """One resolution level as a bare module so its children are named block.{i} / attn.{i}."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    """pixels [B, in_ch, R, R] -> latents [B, z, R/f, R/f], f = 2**(levels-1)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = ch, cfg.resolution
        for level, m in enumerate(mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m))
                block_in = ch * m
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            down = _level(blocks, attns)
            if level != len(mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = _mid(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if level != len(self.down) - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """latents [B, z, g, g] -> pixels [B, out_ch, g*f, g*f]. Built deepest level first, indexed by level."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        block_in, res = ch * mult[-1], cfg.grid_size
        self.conv_in = nn.Conv2d(cfg.latent_channels, block_in, kernel_size=3, padding=1)
        self.mid = _mid(block_in)
        levels: list[nn.Module] = []
        for level in reversed(range(len(mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[level]))
                block_in = ch * mult[level]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            up = _level(blocks, attns)
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook lookup by L2 distance. Holds `embedding.weight` [num_codes, embed_dim]."""

    def __init__(self, num_embeddings: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embed_dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, D] -> codes [N]."""
        e = self.embedding.weight  # [K, D]
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e, the same expansion as the reference so ties break the same way.
        dist = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (z @ e.t())  # [N, K]
        return dist.argmin(dim=1)


def _check_config(cfg: VQConfig) -> None:
    if cfg.double_latent:
        raise ValueError("VQ config: double_latent=True is for KL autoencoders; a VQGAN needs double_latent=False")
    channels = {"base_channels": cfg.base_channels}
    channels.update({f"base_channels*channel_multiplier[{i}]": cfg.base_channels * m
                     for i, m in enumerate(cfg.channel_multiplier)})
    bad = {name: c for name, c in channels.items() if c <= 0 or c % 32}
    if bad:
        raise ValueError(f"VQ config: GroupNorm(32) needs channel counts that are multiples of 32, got {bad}")
    if not cfg.channel_multiplier or cfg.resolution % cfg.downsample_factor:
        raise ValueError(
            f"VQ config: resolution {cfg.resolution} is not divisible by the downsample factor {cfg.downsample_factor}"
        )


class VQModel(nn.Module):
    """Encoder + quantizer (+ decoder). Codes are [B, g*g] LongTensors in row-major grid order."""

    def __init__(self, cfg: VQConfig, with_decoder: bool = True):
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, kernel_size=1)
        self.quantize = VectorQuantizer(cfg.num_embeddings, cfg.embed_dim)
        # post_quant_conv is kept without a decoder too: HF checkpoints carry it even when they drop the decoder.
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, kernel_size=1)
        self.decoder = Decoder(cfg) if with_decoder else None

    @property
    def cfg(self) -> VQConfig:  # short alias of `config`
        return self.config

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        R, C = self.config.resolution, self.config.in_channels
        if pixels.dim() != 4 or pixels.shape[1] != C or pixels.shape[2] != R or pixels.shape[3] != R:
            raise ValueError(f"VQGAN expects pixels shaped [B, {C}, {R}, {R}], got {list(pixels.shape)}")

    def quantize_latents(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B, 3, R, R] -> (z [B, D, g, g] before quantization, codes [B, g*g])."""
        self._check_pixels(pixels)
        z = self.quant_conv(self.encoder(pixels.float()))  # [B, D, g, g]
        B, D, g, _ = z.shape
        codes = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, D))  # row-major over the grid
        return z, codes.view(B, g * g)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, R, R] in [-1, 1] -> codes LongTensor [B, g*g], row-major."""
        return self.quantize_latents(pixels)[1]

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, g*g] -> z_q [B, embed_dim, g, g]."""
        g, K = self.config.grid_size, self.config.num_embeddings
        codes = torch.as_tensor(codes, device=self.quantize.embedding.weight.device)
        if codes.dim() == 1:
            codes = codes[None]
        if codes.dim() != 2 or codes.shape[1] != g * g:
            raise ValueError(f"expected codes shaped [B, {g * g}] ({g}x{g} grid), got {list(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must lie in [0, {K}), got range [{int(codes.min())}, {int(codes.max())}]")
        z_q = self.quantize.embedding(codes.long())  # [B, g*g, D]
        return z_q.view(codes.shape[0], g, g, -1).permute(0, 3, 1, 2).contiguous()

    def _require_decoder(self) -> nn.Module:
        if self.decoder is None:
            raise RuntimeError(
                "this VQGAN has no decoder (HF conversions usually drop it): load one with decoder.* weights, "
                "e.g. Meta's tokenizer/vqgan.ckpt, to turn image tokens into pixels"
            )
        return self.decoder

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q [B, embed_dim, g, g] -> pixels [B, 3, R, R] (roughly in [-1, 1], not clamped)."""
        return self._require_decoder()(self.post_quant_conv(z_q))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, g*g] -> pixels [B, 3, R, R]."""
        self._require_decoder()
        return self.decode_latents(self.embed_codes(codes))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step: (reconstruction [B, 3, R, R], vq_loss scalar, codes [B, g*g]).

        vq_loss = codebook term (moves codes toward encoder outputs) + beta * commitment term (keeps
        encoder outputs near their codes). Gradients reach the encoder through the straight-through
        estimator: the decoder sees z + (z_q - z).detach(), whose value is z_q and whose gradient is z's.
        """
        self._require_decoder()
        z, codes = self.quantize_latents(pixels)
        z_q = self.embed_codes(codes)
        codebook_loss = F.mse_loss(z_q, z.detach())
        commitment_loss = F.mse_loss(z, z_q.detach())
        vq_loss = codebook_loss + COMMITMENT_BETA * commitment_loss
        z_st = z + (z_q - z).detach()
        return self.decode_latents(z_st), vq_loss, codes
