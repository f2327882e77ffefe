"""The Chameleon early-fusion transformer in plain PyTorch.

A Llama-style decoder over one vocabulary of text BPE tokens and VQ image tokens, with Chameleon's
two changes for training stability: QK-norm (a per-head LayerNorm on queries and keys before RoPE)
and, for the large models, `swin_norm` (norms applied to the *outputs* of attention and MLP).

Module and parameter names match the HF checkpoint keys with the leading `model.` removed, so an HF
state dict loads without renaming. RoPE uses the rotate-half convention of HF checkpoints; Meta
checkpoints are permuted into it at load time (see `loading.py`).

The forward pass takes explicit positions and an external KV cache: the engine appends any number of
tokens per sequence (a prefill chunk, one decode token, a speculative window) and never re-prefills.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ChameleonConfig
from .kv_cache import CacheBatch, KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the model dtype, as in the reference (one fused kernel).
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class HeadLayerNorm(nn.Module):
    """QK-norm's parameters: LayerNorm statistics over head_dim only, a separate weight and bias per head.

    Attention applies the query and key norms in one go (see Attention.forward), so this only holds them.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, heads, head_dim]; cos/sin: [B, T, 1, head_dim]."""
    return torch.addcmul(x * cos, rotate_half(x), sin)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """q [B, heads, T, head_dim], k/v [B, kv_heads, L, head_dim], mask [B, 1, T, L] bool (True = visible).

    The one attention call of the model: SDPA dispatches to flash / memory-efficient kernels on CUDA and to
    its flash-style CPU kernel here. Another backend (xformers) would plug in at this function.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    def __init__(self, cfg: ChameleonConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = HeadLayerNorm(self.num_heads, self.head_dim)
        self.k_norm = HeadLayerNorm(self.num_kv_heads, self.head_dim)
        self.qkv_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections()
        self.qk_norm_fused: tuple[torch.Tensor, torch.Tensor] | None = None  # likewise (weight, bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> qk [B, T, (heads + kv_heads) * head_dim] (queries then keys, so QK-norm and RoPE run once
        over both), v [B, T, kv_heads * head_dim]."""
        if self.qkv_weight is None:
            return torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1), self.v_proj(x)
        qk = (self.num_heads + self.num_kv_heads) * self.head_dim
        return F.linear(x, self.qkv_weight).split([qk, self.num_kv_heads * self.head_dim], dim=-1)

    def qk_norm_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm's per-head weight and bias for queries and keys together: [heads + kv_heads, head_dim]."""
        if self.qk_norm_fused is not None:
            return self.qk_norm_fused
        return (torch.cat([self.q_norm.weight, self.k_norm.weight]), torch.cat([self.q_norm.bias, self.k_norm.bias]))

    def forward(self, x, cos, sin, mask, cache: KVCache | None, batch: CacheBatch | None, layer: int, positions):
        B, T, _ = x.shape
        qk, v = self.project(x)
        weight, bias = self.qk_norm_params()
        qk = torch.addcmul(bias, F.layer_norm(qk.view(B, T, -1, self.head_dim), (self.head_dim,), eps=self.q_norm.eps), weight)
        q, k = apply_rope(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=2)  # [B, T, heads, head_dim]
        v = v.view(B, T, self.num_kv_heads, self.head_dim)

        if cache is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, kv_heads, T, head_dim]
        else:  # append this step's keys/values, then attend over the slot's prefix
            k_cache, v_cache = cache.keys[layer], cache.values[layer]  # [slots, kv_heads, max_len, head_dim]
            k_cache[batch.slots[:, None], :, positions] = k.to(k_cache.dtype)
            v_cache[batch.slots[:, None], :, positions] = v.to(v_cache.dtype)
            rows = batch.contiguous_slots if batch.contiguous_slots is not None else batch.slots
            k, v = k_cache[rows, :, : batch.kv_len], v_cache[rows, :, : batch.kv_len]  # [B, kv_heads, L, head_dim]

        out = attend(q.transpose(1, 2), k, v, mask, causal=mask is None and cache is None and T > 1)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ChameleonConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections()

    def forward(self, x):
        if self.gate_up_weight is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ChameleonConfig, dropout: float = 0.0):
        super().__init__()
        self.swin_norm = cfg.swin_norm
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, *attn_args):
        if self.swin_norm:  # 30B/34B: normalise the branch outputs
            h = x + self.dropout(self.input_layernorm(self.self_attn(x, *attn_args)))
            return h + self.dropout(self.post_attention_layernorm(self.mlp(h)))
        h = x + self.dropout(self.self_attn(self.input_layernorm(x), *attn_args))
        return h + self.dropout(self.mlp(self.post_attention_layernorm(h)))


class Transformer(nn.Module):
    def __init__(self, cfg: ChameleonConfig, dropout: float = 0.0):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dropout) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope_tables(self, device: torch.device, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..n-1, float32, [n, head_dim] (built lazily on the right device)."""
        n = max(needed, self.config.max_position_embeddings)
        if self._rope is None or self._rope[0].device != device or self._rope[0].shape[0] < n:
            d = self.config.head_dim
            inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
            freqs = torch.arange(n, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            self._rope = (angles.cos(), angles.sin())
        return self._rope

    def forward(
        self,
        tokens: torch.Tensor,  # [B, T]
        cache: KVCache | None = None,
        batch: CacheBatch | None = None,
        positions: torch.Tensor | None = None,  # [B, T]; defaults to the cache positions or 0..T-1
    ) -> torch.Tensor:
        """Runs the decoder and returns the final hidden states [B, T, hidden]; see `logits`."""
        B, T = tokens.shape
        if positions is None:
            positions = batch.positions(T) if batch is not None else torch.arange(T, device=tokens.device).expand(B, T)
        mask = None
        if cache is not None and not (batch.same_start and T == 1):  # one token per row, all rows equally long: no mask
            # key j is visible to the new token at position p iff j <= p (the slot's prefix + causal window)
            keys = torch.arange(batch.kv_len, device=tokens.device)
            mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, L]
        cos, sin = self.rope_tables(tokens.device, batch.kv_len if batch is not None else T)
        x = self.embed_tokens(tokens)
        cos, sin = cos[positions][:, :, None].to(x.dtype), sin[positions][:, :, None].to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, batch, i, positions)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @torch.no_grad()
    def fuse_projections(self) -> "Transformer":
        """For inference: one matmul for q/k/v and one for gate/up instead of five, and QK-norm's query and
        key parameters as one [heads + kv_heads, head_dim] pair.

        Each fused tensor is new and the original parameters become views of it, so memory does not grow
        and the state dict (HF key names) is unchanged.
        """
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_weight = _share(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                                     attn.q_proj, attn.k_proj, attn.v_proj)
            mlp.gate_up_weight = _share(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.gate_proj, mlp.up_proj)
            weight, bias = attn.qk_norm_params()
            attn.qk_norm_fused = (_share(weight, attn.q_norm, attn.k_norm), _share(bias, attn.q_norm, attn.k_norm, name="bias"))
        return self

    # What a decode step streams through F.linear, by role (after fuse_projections).
    WEIGHT_ROLES = ("qkv", "o_proj", "gate_up", "down_proj", "lm_head")

    def role_weights(self, role: str) -> list[torch.Tensor]:
        return [getattr(owner, name) for owner, name in self._role_slots(role)]

    @torch.no_grad()
    def store_transposed(self, role: str, transposed: bool) -> None:
        """Stores every weight of a role as [in, out] in memory (transposed=True) or as [out, in], as loaded.

        Values, shapes and the forward pass are unchanged (F.linear takes either); what changes is which
        BLAS kernel a one-token step runs and how fast it streams the weights. Which order is faster depends
        on the BLAS and the CPU, so the engine measures it (see engine/model_runner.py).
        """
        for owner, name in self._role_slots(role):
            weight = getattr(owner, name)
            relaid = weight.t().contiguous().t() if transposed else weight.contiguous()
            if isinstance(owner, nn.Linear):
                owner.weight = nn.Parameter(relaid, requires_grad=False)
            elif role == "qkv":
                owner.qkv_weight = _share(relaid, owner.q_proj, owner.k_proj, owner.v_proj)
            else:
                owner.gate_up_weight = _share(relaid, owner.gate_proj, owner.up_proj)

    def _role_slots(self, role: str) -> list[tuple[nn.Module, str]]:
        if self.layers[0].self_attn.qkv_weight is None:
            raise RuntimeError("weight roles describe the fused model: call fuse_projections() first")
        if role == "lm_head":
            return [(self.lm_head, "weight")]
        return {
            "qkv": [(layer.self_attn, "qkv_weight") for layer in self.layers],
            "o_proj": [(layer.self_attn.o_proj, "weight") for layer in self.layers],
            "gate_up": [(layer.mlp, "gate_up_weight") for layer in self.layers],
            "down_proj": [(layer.mlp.down_proj, "weight") for layer in self.layers],
        }[role]


def _share(fused: torch.Tensor, *modules: nn.Module, name: str = "weight") -> torch.Tensor:
    """Points each module's parameter `name` at its rows of `fused` (views: no copy, so loading a state
    dict into the modules still updates `fused`) and returns `fused`."""
    row = 0
    for module in modules:
        n = getattr(module, name).shape[0]
        setattr(module, name, nn.Parameter(fused[row : row + n], requires_grad=False))
        row += n
    return fused
