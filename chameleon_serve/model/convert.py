"""`chameleon-serve convert SRC OUT --to hf|meta`: rewrite a checkpoint in the other format (or re-shard it).

    chameleon-serve convert ~/chameleon/data/ ~/chameleon-7b-hf --to hf --shards 4 --vqgan ~/chameleon/data/tokenizer
    chameleon-serve convert ~/chameleon-7b-hf ~/chameleon-meta --to meta --model-parallel 2

Weights keep the dtype stored in SRC unless --dtype says otherwise. The whole model is held in host memory
once (the loader maps SRC lazily, the writers stream shard by shard).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from .config import CheckpointError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="checkpoint to read: an HF folder or a Meta release (root or models/<size>)")
    parser.add_argument("out", type=Path, help="folder to write (created; existing weight files in it are replaced)")
    parser.add_argument("--to", choices=("hf", "meta"), required=True, help="format to write")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--shards", type=int, default=None, metavar="N", help="HF: split the safetensors into N files")
    split.add_argument("--model-parallel", type=int, default=1, metavar="N", help="Meta: N tensor-parallel shard files")
    parser.add_argument("--vqgan", type=Path, default=None, metavar="PATH",
                        help="a taming vqgan.ckpt (with vqgan.yaml beside it) or a folder with both: replaces SRC's VQGAN, "
                             "e.g. to add the decoder HF conversions drop")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="auto", help="weight dtype to write (default: as stored)")
    parser.add_argument("--size", default="7b", help="Meta: the models/<size> folder name (default 7b)")


def run(args: argparse.Namespace) -> int:
    from .loading import load_checkpoint, save_hf
    from .meta_format import save_meta

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.shards is not None and args.to != "hf" or args.model_parallel != 1 and args.to != "meta":
        print("error: --shards goes with --to hf, --model-parallel with --to meta", file=sys.stderr)
        return 2
    try:
        loaded = load_checkpoint(args.src, vqgan_path=args.vqgan, dtype=DTYPES[args.dtype], device="cpu", progress=True)
        if args.to == "hf":
            out = save_hf(args.out, loaded.model, loaded.vqgan, loaded.tokenizer_path, num_shards=args.shards)
        else:
            out = save_meta(args.out, loaded.model, loaded.vqgan, loaded.tokenizer_path,
                            model_parallel=args.model_parallel, size=args.size)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    decoder = "with" if loaded.vqgan is not None and loaded.vqgan.has_decoder else "without"
    vq = f"VQGAN {decoder} decoder" if loaded.vqgan is not None else "no VQGAN"
    print(f"wrote {args.to} checkpoint to {out} ({loaded.num_parameters / 1e6:.1f}M parameters, {vq})")
    return 0
