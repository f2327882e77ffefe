"""Loading and writing Chameleon checkpoints.

`load_checkpoint` reads either format seen in the wild:

* HF (`config.json`, `model.safetensors` or shards + `model.safetensors.index.json`, `tokenizer.json`),
* Meta's release (`models/<size>/params.json` + `consolidated*.pth` tensor-parallel shards, `tokenizer/`),
  handled in `meta_format.py`,

and returns the transformer, the VQGAN (when the checkpoint has one) and the tokenizer path.

Memory: modules are built on the meta device (no storage), then every weight is copied once from a
memory-mapped file straight into its final dtype and device. Files are mapped one block (one decoder layer)
at a time and unmapped after it, so peak host memory stays near one copy of the weights plus one layer.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from . import meta_format
from .config import ChameleonConfig, CheckpointError, VQConfig
from .meta_format import read_json
from .transformer import Transformer
from .vqgan import VQModel

logger = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_VQ_PREFIX = "model.vqmodel."

PROGRESS_BAR_MIN_BYTES = 1 << 30  # show a progress bar by default only for checkpoints of 1 GiB or more


@dataclass
class LoadedCheckpoint:
    config: ChameleonConfig
    model: Transformer  # eval mode, no gradients
    vqgan: VQModel | None  # float32; None for text-only checkpoints
    tokenizer_path: Path
    format: Literal["hf", "meta"]
    path: Path
    name: str  # model id for /v1/models: the checkpoint directory's name
    num_parameters: int  # of the transformer (the VQGAN is counted apart: see vqgan.parameters())


# --------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | Path,
    *,
    vqgan_path: str | Path | None = None,
    dtype: torch.dtype | Literal["auto"] | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> LoadedCheckpoint:
    """Loads an HF or Meta checkpoint directory (the format is detected).

    vqgan_path: a taming `vqgan.ckpt` (with its `vqgan.yaml` beside it), or a folder holding both; its VQ model
        replaces the checkpoint's own, e.g. to add the decoder an HF conversion dropped.
    dtype: of the transformer; "auto" keeps the dtype stored in the checkpoint; default bfloat16 on CUDA,
        float32 on CPU. The VQGAN always loads in float32, as in the reference code.
    device: default CUDA when available, else CPU.
    progress: show a tqdm bar; default only for checkpoints of 1 GiB or more.
    """
    start = time.perf_counter()
    path = Path(path)
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    fmt, root = detect_format(path)
    source = HFCheckpoint(root) if fmt == "hf" else meta_format.MetaCheckpoint(root)
    config = source.config
    config.vq, vq_weights = _choose_vqgan(source, vqgan_path)

    if dtype == "auto":
        dtype = source.transformer_weights.stored_dtype
    elif dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    with torch.device("meta"):
        model = Transformer(config)
        vqgan = VQModel(config.vq, with_decoder=vq_weights.has_decoder) if vq_weights is not None else None

    parts = [(model, source.transformer_weights, dtype)]
    if vqgan is not None:
        parts.append((vqgan, vq_weights, torch.float32))
    for module, weights, _ in parts:
        weights.check(_expected_shapes(module))
    total_bytes = sum(_nbytes(m, d) for m, _, d in parts)
    show = progress if progress is not None else total_bytes >= PROGRESS_BAR_MIN_BYTES
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"loading {source.name}", disable=not show) as bar:
        for module, weights, module_dtype in parts:
            _materialize(module, weights, module_dtype, device, bar)
            module.eval()

    if vqgan is None:
        logger.warning("%s: no VQGAN weights: image input and output are unavailable", root)
    elif not vqgan.has_decoder:
        logger.warning("%s: no VQGAN decoder: images cannot be generated (pass a vqgan.ckpt to add one)", root)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "loaded %s (%s format): %.1fM parameters, %s on %s in %.1fs",
        root, fmt, num_parameters / 1e6, str(dtype).removeprefix("torch."), device, time.perf_counter() - start,
    )
    return LoadedCheckpoint(
        config=config,
        model=model,
        vqgan=vqgan,
        tokenizer_path=source.tokenizer_path,
        format=fmt,
        path=root,
        name=source.name,
        num_parameters=num_parameters,
    )


def _choose_vqgan(source, vqgan_path: str | Path | None) -> tuple[VQConfig | None, WeightSource | None]:
    """The VQGAN config and weights to load: a separate vqgan.ckpt wins over the checkpoint's own."""
    own = source.config.vq
    if vqgan_path is not None:
        vq, weights = read_taming_vqgan(Path(vqgan_path))
        if own is not None and own != vq:  # the codebook must be the one the transformer's image tokens index
            raise CheckpointError(f"{vqgan_path}: VQGAN config {vq} does not match the checkpoint's {own}")
        return vq, weights
    if isinstance(source, HFCheckpoint):
        if source.vq_weights is not None and own is None:
            raise CheckpointError(f"{source.root / HF_CONFIG}: model.vqmodel.* weights but no vq_config")
        return own, source.vq_weights
    if source.vqgan_ckpt is not None:
        return read_taming_vqgan(source.vqgan_ckpt)
    return None, None


def detect_format(path: Path) -> tuple[Literal["hf", "meta"], Path]:
    """("hf", the folder with config.json) or ("meta", the folder with params.json)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and path.name in (HF_CONFIG, meta_format.PARAMS):
        path = path.parent
    if (path / HF_CONFIG).is_file():
        return "hf", path
    if (path / meta_format.PARAMS).is_file():
        return "meta", path
    sizes = sorted(p.parent for p in path.glob(f"models/*/{meta_format.PARAMS}"))
    if len(sizes) == 1:
        return "meta", sizes[0]
    if len(sizes) > 1:
        names = ", ".join(str(s.relative_to(path)) for s in sizes)
        raise CheckpointError(f"{path}: holds several Meta models ({names}): pass one of them")
    raise CheckpointError(
        f"{path}: not a Chameleon checkpoint: looked for {HF_CONFIG} (HF format) and for "
        f"{meta_format.PARAMS} or models/<size>/{meta_format.PARAMS} (Meta format)"
    )


class WeightSource(Protocol):
    """Where one module's weights come from, named by the module's own state-dict names."""

    stored_dtype: torch.dtype
    has_decoder: bool  # VQGAN sources only

    def check(self, expected: dict[str, torch.Size]) -> None:
        """Raises CheckpointError (naming the file and key) on a missing, unexpected or misshapen weight."""

    def reading(self) -> contextlib.AbstractContextManager[Callable[[str, torch.Tensor], None]]:
        """Maps the files; yields read(name, out), which fills `out` (final shape, dtype, device); unmaps on exit."""


def _expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {name: t.shape for name, t in module.state_dict(keep_vars=True).items()}


def _nbytes(module: nn.Module, dtype: torch.dtype) -> int:
    return sum(t.numel() * dtype.itemsize for t in module.state_dict(keep_vars=True).values())


def _blocks(names: list[str]) -> list[list[str]]:
    """Groups weight names by top module, one group per decoder layer ("layers.3.*"), order kept."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _materialize(module: nn.Module, weights: WeightSource, dtype: torch.dtype, device: torch.device, bar) -> None:
    """Replaces every meta tensor of `module` with its weight, converted to dtype/device.

    Each weight is allocated once, at its final dtype and device, and filled straight from the mapped file.
    Files are mapped per block and unmapped after it, so the pages read stay resident only briefly.
    """
    placeholders = module.state_dict(keep_vars=True)
    for block in _blocks(list(placeholders)):
        with weights.reading() as read:
            for name in block:
                meta = placeholders[name]
                # An owned tensor (never a view of the mapped file, which may change or vanish under us).
                tensor = torch.empty(meta.shape, dtype=dtype if meta.is_floating_point() else meta.dtype, device=device)
                read(name, tensor)
                _assign(module, name, tensor)
                bar.update(tensor.nbytes)
    leftover = [n for n, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    if leftover:  # a module with a tensor outside its state dict: a bug here, not in the checkpoint
        raise RuntimeError(f"not materialized: {leftover}")


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[leaf] = tensor


def check_weights(
    expected: dict[str, torch.Size],
    found: dict[str, tuple[torch.Size, torch.dtype]],
    origin: Callable[[str], str],
    where: str,
) -> None:
    """Compares the weights a module needs with those a checkpoint has; `origin(name)` says key and file."""
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing key {origin(missing[0])}{more}")
    unexpected = [n for n in found if n not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"unexpected key {origin(unexpected[0])}{more}")
    for name, shape in expected.items():
        if found[name][0] != shape:
            raise CheckpointError(
                f"wrong shape for {origin(name)}: expected {list(shape)}, found {list(found[name][0])}"
            )


# --------------------------------------------------------------------------------------------- files


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, memory-mapped: nothing is read until a tensor is used."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None


@dataclass
class FileTensor:
    key: str  # name in the checkpoint
    file: Path
    shape: torch.Size
    dtype: torch.dtype


class NamedTensorFiles:
    """Weights stored one-to-one under checkpoint keys, possibly spread over several files."""

    def __init__(
        self,
        tensors: dict[str, FileTensor],
        where: str,
        mapper: Callable[[Path], dict[str, torch.Tensor]],
        key_of: Callable[[str], str] = lambda name: name,
    ):
        self.tensors = tensors  # module name -> where it is stored
        self.where = where  # what to blame for a missing key: the index or the single weights file
        self.mapper = mapper
        self.key_of = key_of  # module name -> checkpoint key, to name a missing one
        self.has_decoder = any(name.startswith("decoder.") for name in tensors)
        floats = [t.dtype for t in tensors.values() if t.dtype.is_floating_point]
        self.stored_dtype = floats[0] if floats else torch.float32

    def origin(self, name: str) -> str:
        t = self.tensors.get(name)
        return f"{t.key!r} in {t.file}" if t else repr(self.key_of(name))

    def check(self, expected: dict[str, torch.Size]) -> None:
        found = {n: (t.shape, t.dtype) for n, t in self.tensors.items()}
        check_weights(expected, found, self.origin, self.where)

    @contextmanager
    def reading(self) -> Iterator[Callable[[str, torch.Tensor], None]]:
        mapped: dict[Path, dict[str, torch.Tensor]] = {}

        def read(name: str, out: torch.Tensor) -> None:
            t = self.tensors[name]
            if t.file not in mapped:
                mapped[t.file] = self.mapper(t.file)
            out.copy_(mapped[t.file][t.key])  # converts dtype and device on the way

        try:
            yield read
        finally:
            mapped.clear()  # drops the last references to the mappings: their pages leave our RSS


# --------------------------------------------------------------------------------------------- HF format


def hf_key(name: str) -> str:
    """Our transformer weight name -> its HF checkpoint key."""
    return name if name == "lm_head.weight" else "model." + name


class HFCheckpoint:
    """An HF checkpoint folder: config.json, safetensors weights (maybe sharded), tokenizer.json."""

    def __init__(self, root: Path):
        self.root = root
        self.name = root.resolve().name
        self.config = ChameleonConfig.from_hf_dict(read_json(root / HF_CONFIG), source=str(root / HF_CONFIG))
        self.tokenizer_path = root / HF_TOKENIZER
        if not self.tokenizer_path.is_file():
            raise CheckpointError(f"{self.tokenizer_path}: file not found (the HF checkpoint's text tokenizer)")
        stored, where = self._scan_weights()
        transformer, vq = {}, {}
        for key, t in stored.items():
            if key.startswith(HF_VQ_PREFIX):
                vq[key.removeprefix(HF_VQ_PREFIX)] = t
            elif key.startswith("model."):
                transformer[key.removeprefix("model.")] = t
            elif key == "lm_head.weight":
                transformer[key] = t
            else:
                raise CheckpointError(f"unexpected key {key!r} in {t.file}")
        self.transformer_weights = NamedTensorFiles(transformer, where, map_safetensors, hf_key)
        self.vq_weights = NamedTensorFiles(vq, where, map_safetensors, lambda n: HF_VQ_PREFIX + n) if vq else None

    def _scan_weights(self) -> tuple[dict[str, FileTensor], str]:
        """Checkpoint key -> file, shape, dtype, read from the safetensors headers only."""
        index_path, single = self.root / HF_INDEX, self.root / HF_WEIGHTS
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path}: no 'weight_map' object")
            files = {key: self.root / name for key, name in weight_map.items()}
            where = str(index_path)
        elif single.is_file():
            files, where = None, str(single)
        else:
            raise CheckpointError(f"{self.root}: no weights: looked for {HF_WEIGHTS} and {HF_INDEX}")

        stored: dict[str, FileTensor] = {}
        for file in sorted(set(files.values())) if files else [single]:
            tensors = map_safetensors(file)
            keys = [k for k, f in files.items() if f == file] if files else list(tensors)
            for key in keys:
                if key not in tensors:
                    raise CheckpointError(f"{file}: missing key {key!r} (listed in {index_path.name})")
                stored[key] = FileTensor(key, file, tensors[key].shape, tensors[key].dtype)
            del tensors
        return stored, where


# --------------------------------------------------------------------------------------------- VQGAN


def read_taming_vqgan(path: Path) -> tuple[VQConfig, NamedTensorFiles]:
    """A taming-transformers VQGAN: `vqgan.ckpt` ({"state_dict": ...}) and the `vqgan.yaml` beside it."""
    ckpt = path / meta_format.VQGAN_CKPT if path.is_dir() else path
    yaml_path = ckpt.with_suffix(".yaml")
    if not yaml_path.is_file():
        yaml_path = ckpt.parent / meta_format.VQGAN_YAML
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: file not found (the VQGAN weights)")
    config = meta_format.read_vqgan_yaml(yaml_path)
    state = meta_format.map_taming_state_dict(ckpt)
    tensors = {k: FileTensor(k, ckpt, t.shape, t.dtype) for k, t in state.items()}
    del state
    return config, NamedTensorFiles(tensors, str(ckpt), meta_format.map_taming_state_dict)


# --------------------------------------------------------------------------------------------- writing


def tokenizer_vocab(tokenizer_file: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
    except Exception as e:  # the tokenizers library raises a bare Exception on a bad file
        raise CheckpointError(f"{tokenizer_file}: cannot read tokenizer: {e}") from None


def hf_config_dict(model: Transformer, vqgan: VQModel | None, vocab: dict[str, int]) -> dict:
    config = model.config
    if vqgan is not None:
        config = ChameleonConfig(**{**vars(config), "vq": vqgan.config})
    d = config.to_hf_dict()
    vocabulary_map = dict(vocab)
    # HF names the image placeholder "<image>" (the reserved token Meta's viewer uses for it).
    if "<image>" not in vocabulary_map and "<reserved08707>" in vocabulary_map:
        vocabulary_map["<image>"] = vocabulary_map["<reserved08707>"]
    d["vocabulary_map"] = vocabulary_map
    # Special ids by name from the tokenizer: HF's defaults (bos 1, eos 2) do not match Chameleon's vocab.
    for field, token in (("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")):
        d[field] = vocab.get(token)
    d["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return d


def plan_shards(sizes: list[int], max_shard_bytes: int | None = None, num_shards: int | None = None) -> list[int]:
    """Shard number (0-based) of each tensor, in order: greedy up to max_shard_bytes, or balanced into num_shards."""
    if num_shards is not None:
        total = sum(sizes)
        shards, done = [], 0
        for size in sizes:  # a tensor goes to the shard its midpoint falls in: contiguous and balanced
            shards.append(min(num_shards - 1, int((done + size / 2) * num_shards / max(total, 1))))
            done += size
        renumber = {s: i for i, s in enumerate(sorted(set(shards)))}  # no empty shard when tensors are few
        return [renumber[s] for s in shards]
    shards, current, used = [], 0, 0
    for size in sizes:
        if max_shard_bytes is not None and used and used + size > max_shard_bytes:
            current, used = current + 1, 0
        shards.append(current)
        used += size
    return shards


def save_hf(
    out_dir: str | Path,
    model: Transformer,
    vqgan: VQModel | None,
    tokenizer_file: str | Path,
    max_shard_bytes: int | None = None,
    *,
    num_shards: int | None = None,
) -> Path:
    """Writes an HF checkpoint that `load_checkpoint` and transformers' `from_pretrained` both read.

    config.json (with `vocabulary_map` and special token ids from the tokenizer), weights as
    `model.safetensors` or, with max_shard_bytes / num_shards, `model-0000i-of-0000n.safetensors` + index,
    the VQGAN under `model.vqmodel.*` (its decoder too, which transformers ignores), and tokenizer.json.
    """
    out_dir, tokenizer_file = Path(out_dir), Path(tokenizer_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer_vocab(tokenizer_file)
    (out_dir / HF_CONFIG).write_text(json.dumps(hf_config_dict(model, vqgan, vocab), indent=2))
    if tokenizer_file.resolve() != (out_dir / HF_TOKENIZER).resolve():
        shutil.copyfile(tokenizer_file, out_dir / HF_TOKENIZER)

    tensors = {hf_key(n): t for n, t in model.state_dict().items()}
    if vqgan is not None:
        tensors.update({HF_VQ_PREFIX + n: t for n, t in vqgan.state_dict().items()})
    keys = list(tensors)
    shards = plan_shards([tensors[k].nbytes for k in keys], max_shard_bytes, num_shards)
    count = shards[-1] + 1
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / HF_INDEX]:
        stale.unlink(missing_ok=True)
    if count == 1 and num_shards is None and max_shard_bytes is None:
        save_file({k: _for_file(tensors[k]) for k in keys}, str(out_dir / HF_WEIGHTS), metadata={"format": "pt"})
        return out_dir
    weight_map = {}
    for i in range(count):
        name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        part = {k: _for_file(tensors[k]) for k, s in zip(keys, shards) if s == i}
        save_file(part, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (out_dir / HF_INDEX).write_text(json.dumps(index, indent=2))
    return out_dir


def _for_file(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


