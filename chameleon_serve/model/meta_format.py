"""Meta's Chameleon release format (also used by Anole): reading and writing.

    <root>/models/<size>/params.json             model shapes under "model" (Llama-style names)
    <root>/models/<size>/consolidate_params.json model_parallel_size
    <root>/models/<size>/consolidated.pth        or consolidated.00.pth ... one file per tensor-parallel rank
    <root>/tokenizer/text_tokenizer.json         HF tokenizers file
    <root>/tokenizer/vqgan.yaml, vqgan.ckpt      taming-transformers VQGAN config and {"state_dict": ...}

Two conventions differ from HF / our Transformer and are converted here, in both directions:

* RoPE: Meta rotates interleaved pairs (x0, y0, x1, y1, ...) of each head; we rotate halves
  (x0, x1, ..., y0, y1, ...). The rows of wq/wk and the q/k-norm weight and bias are permuted per head.
* Tensor parallelism: each rank holds a slice of each weight (see META_LAYER_KEYS for the split dimension)
  and ONE q/k LayerNorm(head_dim) shared by that rank's heads; we hold one per head.

This module also holds the small file helpers both formats share (JSON, memory-mapped torch files).
"""
from __future__ import annotations

import json
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from .config import ChameleonConfig, CheckpointError, VQConfig

PARAMS = "params.json"
CONSOLIDATE_PARAMS = "consolidate_params.json"
TOKENIZER_DIR = "tokenizer"
TEXT_TOKENIZER = "text_tokenizer.json"
VQGAN_YAML = "vqgan.yaml"
VQGAN_CKPT = "vqgan.ckpt"

ROWS, COLUMNS, REPLICATED, PER_RANK = 0, 1, "replicated", "per-rank"

# Our name inside layers.N -> (Meta name inside layers.N, how tensor-parallel ranks split it).
# Column-parallel weights (wq, wk, wv, w1, w3) split their output rows; row-parallel ones (wo, w2) their inputs.
META_LAYER_KEYS: dict[str, tuple[str, Any]] = {
    "self_attn.q_proj.weight": ("attention.wq.weight", ROWS),
    "self_attn.k_proj.weight": ("attention.wk.weight", ROWS),
    "self_attn.v_proj.weight": ("attention.wv.weight", ROWS),
    "self_attn.o_proj.weight": ("attention.wo.weight", COLUMNS),
    "self_attn.q_norm.weight": ("attention.q_normalization.weight", PER_RANK),
    "self_attn.q_norm.bias": ("attention.q_normalization.bias", PER_RANK),
    "self_attn.k_norm.weight": ("attention.k_normalization.weight", PER_RANK),
    "self_attn.k_norm.bias": ("attention.k_normalization.bias", PER_RANK),
    "mlp.gate_proj.weight": ("feed_forward.w1.weight", ROWS),
    "mlp.up_proj.weight": ("feed_forward.w3.weight", ROWS),
    "mlp.down_proj.weight": ("feed_forward.w2.weight", COLUMNS),
    "input_layernorm.weight": ("attention_norm.weight", REPLICATED),
    "post_attention_layernorm.weight": ("ffn_norm.weight", REPLICATED),
}
# The embedding is split along the hidden dimension (each rank all-gathers), the output along the vocabulary.
META_TOP_KEYS: dict[str, tuple[str, Any]] = {
    "embed_tokens.weight": ("tok_embeddings.weight", COLUMNS),
    "norm.weight": ("norm.weight", REPLICATED),
    "lm_head.weight": ("output.weight", ROWS),
}
# Stored by Meta's training code, unused at inference (its own loader ignores it too).
META_IGNORED_KEYS = {"rope.freqs"}


# --------------------------------------------------------------------------------------------- files


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


class _Inert:
    """Stands in for any object a checkpoint pickles besides tensors and containers (Lightning callbacks,
    hyper-parameter namespaces, ...): it accepts whatever it is given and runs no code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Unpickles torch tensors and plain containers; every other global becomes `_Inert` (never imported)."""

    SAFE_MODULES = ("torch", "collections", "numpy")
    SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bool", "complex", "slice"}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in self.SAFE_MODULES or (module == "builtins" and name in self.SAFE_BUILTINS):
            return super().find_class(module, name)
        return _Inert


class _TensorsOnlyPickle:
    """A `pickle_module` for torch.load that keeps tensors and drops everything else."""

    Unpickler = _TensorsOnlyUnpickler
    load = staticmethod(lambda f, **kw: _TensorsOnlyUnpickler(f, **kw).load())
    __name__ = "tensors_only_pickle"


def _load_torch(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError:
        # Training checkpoints (e.g. a Lightning `vqgan.ckpt`) also pickle callback and optimizer objects that
        # the weights-only loader refuses. Keep their tensors; replace the rest by inert placeholders.
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False, pickle_module=_TensorsOnlyPickle)


def map_torch_file(path: Path) -> dict[str, Any]:
    """A torch.save'd dict, memory-mapped: tensor data is read from disk only when used."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        try:
            data = _load_torch(path, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files from torch < 1.6 (not zip) cannot be mapped: read them whole.
            data = _load_torch(path, mmap=False)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... on a damaged file
        raise CheckpointError(f"{path}: cannot read torch checkpoint: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def map_taming_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a taming-transformers `vqgan.ckpt`, without its training-only `loss.*` entries."""
    data = map_torch_file(path)
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of tensors")
    return {k: v for k, v in state.items() if not k.startswith("loss.") and isinstance(v, torch.Tensor)}


def read_vqgan_yaml(path: Path) -> VQConfig:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (the VQGAN config)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: not valid YAML: {e}") from None
    try:
        params = data["model"]["params"]
        return VQConfig.from_taming_dict(params)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: missing field {e.args[0]!r} (expected model.params.ddconfig...)") from None


def vqgan_yaml_dict(vq: VQConfig) -> dict:
    return {"model": {"target": "taming.models.vqgan.VQModel", "params": vq.to_taming_dict()}}


# --------------------------------------------------------------------------------------------- conventions


def interleaved_to_half(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Permutes each head's rows (dim 0) from Meta's interleaved RoPE pairs to rotate-half order.

    (fill_from_ranks does the same through views; this copy is for one-off use.)"""
    return x.reshape(num_heads, -1, 2, *x.shape[1:]).transpose(1, 2).reshape(x.shape)


def half_to_interleaved(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of interleaved_to_half."""
    return x.reshape(num_heads, 2, -1, *x.shape[1:]).transpose(1, 2).reshape(x.shape)


def meta_key(name: str) -> tuple[str, Any]:
    """Our weight name -> (Meta key, split rule)."""
    if name.startswith("layers."):
        _, layer, rest = name.split(".", 2)
        meta, split = META_LAYER_KEYS[rest]
        return f"layers.{layer}.{meta}", split
    return META_TOP_KEYS[name]


def rope_heads(name: str, cfg: ChameleonConfig) -> int | None:
    """How many heads a weight's rows are permuted over for RoPE, or None if it is not permuted."""
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_norm.weight", "self_attn.q_norm.bias")):
        return cfg.num_attention_heads
    if name.endswith(("self_attn.k_proj.weight", "self_attn.k_norm.weight", "self_attn.k_norm.bias")):
        return cfg.num_key_value_heads
    return None


def rank_shape(full: torch.Size, split: Any, ranks: int, head_dim: int) -> tuple[int, ...]:
    """Shape of one rank's slice of a weight whose whole shape is `full`."""
    if split == REPLICATED:
        return tuple(full)
    if split == PER_RANK:
        return (head_dim,)
    shape = list(full)
    shape[split] //= ranks
    return tuple(shape)


def fill_from_ranks(name: str, parts: list[torch.Tensor], out: torch.Tensor, cfg: ChameleonConfig) -> None:
    """Writes one of our weights into `out` from its tensor-parallel slices in Meta's layout.

    Each slice is copied through a strided view straight into its place in `out` (converting dtype and
    device on the way): no merged or permuted temporary is ever allocated.
    """
    _, split = meta_key(name)
    heads, ranks = rope_heads(name, cfg), len(parts)
    if split == REPLICATED:
        out.copy_(parts[0])  # every rank holds the same copy
    elif split == PER_RANK:  # one LayerNorm(head_dim) per rank, shared by its heads -> one per head
        per_rank = out.view(ranks, heads // ranks, -1)
        for dest, part in zip(per_rank, parts):
            dest.copy_(interleaved_to_half(part, 1).expand_as(dest))
    else:
        for dest, part in zip(out.chunk(ranks, dim=split), parts):
            if heads:  # rows of each head: interleaved pairs -> halves, as views of both sides
                h = heads // ranks
                dest = dest.view(h, 2, -1, *dest.shape[1:])
                part = part.view(h, -1, 2, *part.shape[1:]).transpose(1, 2)
            dest.copy_(part)


def split_for_rank(name: str, full: torch.Tensor, rank: int, ranks: int, cfg: ChameleonConfig) -> torch.Tensor:
    """Rank `rank`'s slice of one of our weights, in Meta's layout (the inverse of fill_from_ranks)."""
    meta, split = meta_key(name)
    heads = rope_heads(name, cfg)
    if split == PER_RANK:
        group = full.reshape(ranks, heads // ranks, -1)[rank]
        if not torch.equal(group, group[:1].expand_as(group)):
            raise CheckpointError(
                f"{name}: heads {rank * len(group)}..{(rank + 1) * len(group) - 1} have different QK-norm weights, "
                f"but the Meta format stores one {meta} per model-parallel rank (model_parallel={ranks})"
            )
        return half_to_interleaved(group[0], 1).clone()
    if heads:
        full = half_to_interleaved(full, heads)
    if split == REPLICATED:
        return full
    # clone: torch.save would otherwise write the whole tensor the slice is a view of
    return full.chunk(ranks, dim=split)[rank].clone(memory_format=torch.contiguous_format)


def meta_ffn_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The MLP width Meta's FeedForward derives from params.json (Llama's rule)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def ffn_params(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make meta_ffn_size give intermediate_size."""
    if meta_ffn_size(dim, 256, None) == intermediate_size:
        return 256, None  # the real models' values
    # Any width: round up to a multiple of the width itself, from a multiplier that lands at or just below it.
    multiplier = intermediate_size / int(2 * (4 * dim) / 3)
    assert meta_ffn_size(dim, intermediate_size, multiplier) == intermediate_size
    return intermediate_size, multiplier


def config_from_params(params: dict, source: str) -> ChameleonConfig:
    """ChameleonConfig (without VQ) from params.json merged as Meta's loader does."""
    try:
        dim, heads = int(params["dim"]), int(params["n_heads"])
        if params.get("qk_normalization") is False:
            raise CheckpointError(f"{source}: qk_normalization is false: only Chameleon models (with QK-norm) load")
        theta = float(params.get("rope_theta", 10000.0))
        return ChameleonConfig(
            vocab_size=int(params["vocab_size"]),
            hidden_size=dim,
            intermediate_size=meta_ffn_size(dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")),
            num_hidden_layers=int(params["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(params.get("n_kv_heads") or heads),
            # params.json has no context length; Chameleon v1 was trained at 4096 (as HF's converter assumes).
            max_position_embeddings=int(params.get("max_seq_len") or (16384 if theta > 10000 else 4096)),
            rope_theta=theta,
            rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            swin_norm=bool(params.get("swin_norm", False)),
            vq=None,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing required field {e.args[0]!r}") from None


def params_from_config(cfg: ChameleonConfig) -> dict:
    multiple_of, multiplier = ffn_params(cfg.hidden_size, cfg.intermediate_size)
    return {
        "model": {
            "dim": cfg.hidden_size,
            "n_layers": cfg.num_hidden_layers,
            "n_heads": cfg.num_attention_heads,
            "n_kv_heads": cfg.num_key_value_heads,
            "vocab_size": cfg.vocab_size,
            "multiple_of": multiple_of,
            "ffn_dim_multiplier": multiplier,
            "norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "qk_normalization": True,
            "swin_norm": cfg.swin_norm,
            "max_seq_len": cfg.max_position_embeddings,  # ours; Meta's loader ignores unknown fields
        }
    }


# --------------------------------------------------------------------------------------------- reading


def find_shards(model_dir: Path) -> list[Path]:
    single = model_dir / "consolidated.pth"
    if single.is_file():
        return [single]
    shards = sorted(model_dir.glob("consolidated.[0-9][0-9].pth"))
    if not shards:
        raise CheckpointError(f"{model_dir}: no weights: looked for consolidated.pth and consolidated.NN.pth")
    for rank, shard in enumerate(shards):
        if shard.name != f"consolidated.{rank:02d}.pth":
            raise CheckpointError(f"{model_dir / f'consolidated.{rank:02d}.pth'}: file not found ({len(shards)} shards)")
    return shards


class MetaCheckpoint:
    """A Meta release: `model_dir` is models/<size>; the tokenizer folder is found beside `models/`."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        root = model_dir.parent.parent if model_dir.parent.name == "models" else model_dir
        self.name = root.resolve().name
        params = read_json(model_dir / PARAMS)
        consolidate = read_json(model_dir / CONSOLIDATE_PARAMS) if (model_dir / CONSOLIDATE_PARAMS).exists() else {}
        merged = {**params, **(params.get("model") or {}), **consolidate}  # the precedence of Meta's loader
        self.config = config_from_params(merged, str(model_dir / PARAMS))
        shards = find_shards(model_dir)
        declared = int(merged.get("model_parallel_size", len(shards)))
        if declared != len(shards):
            raise CheckpointError(f"{model_dir / CONSOLIDATE_PARAMS}: model_parallel_size {declared}, but {len(shards)} shard files")
        self.transformer_weights = MetaWeights(shards, self.config)

        candidates = [root / TOKENIZER_DIR, model_dir / TOKENIZER_DIR]
        tokenizer_dir = next((d for d in candidates if d.is_dir()), candidates[0])
        self.tokenizer_path = tokenizer_dir / TEXT_TOKENIZER
        if not self.tokenizer_path.is_file():
            raise CheckpointError(f"{self.tokenizer_path}: file not found (the Meta checkpoint's text tokenizer)")
        ckpt, yaml_path = tokenizer_dir / VQGAN_CKPT, tokenizer_dir / VQGAN_YAML
        if ckpt.exists() != yaml_path.exists():
            missing = yaml_path if ckpt.exists() else ckpt
            raise CheckpointError(f"{missing}: file not found (the VQGAN needs both {VQGAN_YAML} and {VQGAN_CKPT})")
        self.vqgan_ckpt = ckpt if ckpt.exists() else None  # None: a text-only checkpoint


class MetaWeights:
    """The transformer's weights from tensor-parallel shards, merged and permuted into our layout on read."""

    has_decoder = False

    def __init__(self, shards: list[Path], cfg: ChameleonConfig):
        self.shards, self.cfg = shards, cfg
        self.found: list[dict[str, tuple[torch.Size, torch.dtype]]] = []
        for shard in shards:  # shapes and dtypes only: nothing is read from the mapped files
            tensors = map_torch_file(shard)
            self.found.append({k: (v.shape, v.dtype) for k, v in tensors.items() if isinstance(v, torch.Tensor)})
            del tensors
        dtypes = [d for shard in self.found for _, d in shard.values() if d.is_floating_point]
        self.stored_dtype = dtypes[0] if dtypes else torch.float32

    def check(self, expected: dict[str, torch.Size]) -> None:
        ranks = len(self.shards)
        wanted = set(META_IGNORED_KEYS)
        for name, full in expected.items():
            key, split = meta_key(name)
            wanted.add(key)
            heads = rope_heads(name, self.cfg)
            if (split in (ROWS, COLUMNS) and full[split] % ranks) or (split == PER_RANK and heads % ranks):
                raise CheckpointError(f"{self.shards[0].parent}: {key} of shape {list(full)} cannot be split over {ranks} shards")
            shape = rank_shape(full, split, ranks, self.cfg.head_dim)
            for shard, found in zip(self.shards, self.found):
                if key not in found:
                    raise CheckpointError(f"{shard}: missing key {key!r}")
                if tuple(found[key][0]) != shape:
                    raise CheckpointError(
                        f"wrong shape for {key!r} in {shard}: expected {list(shape)}, found {list(found[key][0])}"
                    )
        for shard, found in zip(self.shards, self.found):
            unexpected = sorted(set(found) - wanted)
            if unexpected:
                raise CheckpointError(f"{shard}: unexpected key {unexpected[0]!r}" + (
                    f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))

    @contextmanager
    def reading(self) -> Iterator[Callable[[str, torch.Tensor], None]]:
        mapped = [map_torch_file(shard) for shard in self.shards]

        def read(name: str, out: torch.Tensor) -> None:
            fill_from_ranks(name, [m[meta_key(name)[0]] for m in mapped], out, self.cfg)

        try:
            yield read
        finally:
            mapped.clear()  # unmaps the shards: the pages read leave our RSS


# --------------------------------------------------------------------------------------------- writing


def save_meta(
    out_dir: str | Path,
    model: torch.nn.Module,
    vqgan: torch.nn.Module | None,
    tokenizer_file: str | Path,
    model_parallel: int = 1,
    size: str = "7b",
) -> Path:
    """Writes Meta's release layout (see the module docstring), split over `model_parallel` shard files.

    The QK-norm weights must be equal across the heads of each rank: the format stores one per rank.
    """
    out_dir, cfg = Path(out_dir), model.config
    if model_parallel < 1:
        raise CheckpointError(f"model_parallel must be at least 1, got {model_parallel}")
    for what, n in (("num_attention_heads", cfg.num_attention_heads), ("num_key_value_heads", cfg.num_key_value_heads),
                    ("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size),
                    ("intermediate_size", cfg.intermediate_size)):
        if n % model_parallel:
            raise CheckpointError(f"{what} {n} cannot be split over model_parallel {model_parallel} shards")
    model_dir = out_dir / "models" / size
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / PARAMS).write_text(json.dumps(params_from_config(cfg), indent=2))
    (model_dir / CONSOLIDATE_PARAMS).write_text(json.dumps({"model_parallel_size": model_parallel}, indent=2))
    for stale in model_dir.glob("consolidated*.pth"):
        stale.unlink()

    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    for rank in range(model_parallel):  # one rank's slices in memory at a time
        shard = {meta_key(name)[0]: split_for_rank(name, t, rank, model_parallel, cfg) for name, t in state.items()}
        shard["rope.freqs"] = inv_freq  # Meta's loader expects this key
        file = "consolidated.pth" if model_parallel == 1 else f"consolidated.{rank:02d}.pth"
        torch.save(shard, model_dir / file)
        del shard

    tokenizer_dir = out_dir / TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    if Path(tokenizer_file).resolve() != (tokenizer_dir / TEXT_TOKENIZER).resolve():
        shutil.copyfile(tokenizer_file, tokenizer_dir / TEXT_TOKENIZER)
    for stale in (tokenizer_dir / VQGAN_YAML, tokenizer_dir / VQGAN_CKPT):
        stale.unlink(missing_ok=True)
    if vqgan is not None:
        (tokenizer_dir / VQGAN_YAML).write_text(yaml.safe_dump(vqgan_yaml_dict(vqgan.config), sort_keys=False))
        state = {name: t.detach().cpu() for name, t in vqgan.state_dict().items()}
        torch.save({"state_dict": state}, tokenizer_dir / VQGAN_CKPT)
    return out_dir
