"""Configuration of a Chameleon checkpoint: the transformer and its VQGAN image tokenizer.

One dataclass each, built from either checkpoint format (HF `config.json`, Meta `params.json` +
`vqgan.yaml`) so the rest of the code never looks at raw dictionaries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint cannot be used. The message names the file or key at fault."""


@dataclass
class VQConfig:
    """The VQGAN ("Make-a-Scene" style) that maps images to and from a grid of codebook indices."""

    resolution: int = 512
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    latent_channels: int = 256  # z channels
    num_embeddings: int = 8192  # codebook size
    embed_dim: int = 256  # codebook vector size
    double_latent: bool = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per image side (32 for the real 512 px model)."""
        return self.resolution // self.downsample_factor

    @property
    def image_tokens(self) -> int:
        """Codes per image (1024 for the real model)."""
        return self.grid_size**2

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "model_type": "chameleon_vqgan",
            "embed_dim": self.embed_dim,
            "num_embeddings": self.num_embeddings,
            "double_latent": self.double_latent,
            "latent_channels": self.latent_channels,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "base_channels": self.base_channels,
            "channel_multiplier": list(self.channel_multiplier),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "dropout": 0.0,
            "attn_type": "vanilla",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "VQConfig":
        return cls(
            resolution=int(d.get("resolution", 512)),
            in_channels=int(d.get("in_channels", 3)),
            out_channels=int(d.get("out_channels", d.get("in_channels", 3))),
            base_channels=int(d.get("base_channels", 128)),
            channel_multiplier=tuple(int(c) for c in d.get("channel_multiplier", (1, 1, 2, 2, 4))),
            num_res_blocks=int(d.get("num_res_blocks", 2)),
            attn_resolutions=tuple(int(r) for r in (d.get("attn_resolutions") or ())),
            latent_channels=int(d.get("latent_channels", 256)),
            num_embeddings=int(d.get("num_embeddings", 8192)),
            embed_dim=int(d.get("embed_dim", 256)),
            double_latent=bool(d.get("double_latent", False)),
        )

    def to_taming_dict(self) -> dict[str, Any]:
        """The `model.params` block of a taming-transformers `vqgan.yaml`."""
        return {
            "embed_dim": self.embed_dim,
            "n_embed": self.num_embeddings,
            "ddconfig": {
                "double_z": self.double_latent,
                "z_channels": self.latent_channels,
                "resolution": self.resolution,
                "in_channels": self.in_channels,
                "out_ch": self.out_channels,
                "ch": self.base_channels,
                "ch_mult": list(self.channel_multiplier),
                "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": list(self.attn_resolutions),
                "dropout": 0.0,
            },
        }

    @classmethod
    def from_taming_dict(cls, params: dict[str, Any]) -> "VQConfig":
        dd = params["ddconfig"]
        return cls(
            resolution=int(dd["resolution"]),
            in_channels=int(dd.get("in_channels", 3)),
            out_channels=int(dd.get("out_ch", 3)),
            base_channels=int(dd["ch"]),
            channel_multiplier=tuple(int(c) for c in dd["ch_mult"]),
            num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in (dd.get("attn_resolutions") or ())),
            latent_channels=int(dd["z_channels"]),
            num_embeddings=int(params["n_embed"]),
            embed_dim=int(params["embed_dim"]),
            double_latent=bool(dd.get("double_z", False)),
        )


@dataclass
class ChameleonConfig:
    """Shapes of the early-fusion transformer. Field names follow HF's `config.json`."""

    vocab_size: int = 65536
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    swin_norm: bool = False
    vq: VQConfig | None = field(default_factory=VQConfig)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("vq", "rope_theta")}
        d.update(
            model_type="chameleon",
            architectures=["ChameleonForConditionalGeneration"],
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            model_parallel_size=1,
        )
        if self.vq is not None:
            d["vq_config"] = self.vq.to_hf_dict()
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ChameleonConfig":
        if d.get("model_type", "chameleon") != "chameleon":
            raise CheckpointError(f"{source}: model_type is {d.get('model_type')!r}, expected 'chameleon'")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise CheckpointError(f"{source}: rope type {rope.get('rope_type')!r} is not supported")
        rope_theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        try:
            heads = int(d["num_attention_heads"])
            return cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
                rope_theta=float(rope_theta),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                swin_norm=bool(d.get("swin_norm", False)),
                vq=VQConfig.from_hf_dict(d["vq_config"]) if d.get("vq_config") else None,
            )
        except KeyError as e:
            raise CheckpointError(f"{source}: missing required field {e.args[0]!r}") from None
