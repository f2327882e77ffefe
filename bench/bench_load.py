"""Checkpoint load time and peak host memory, per format, against the checkpoint's size.

    python bench/bench_load.py --size-mb 300

Writes one random float32 checkpoint of about --size-mb in each layout (HF single file, HF sharded, Meta with
1 and 2 tensor-parallel shards) to a temporary folder, then loads each in a fresh Python process and reports
wall time of load_checkpoint and the process's peak RSS above what it held before loading (imports, including
torch's meta-device registrations, are in the baseline). The target: peak growth near 1.0x the weights plus
one decoder layer, never 2x.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chameleon_serve.testing import write_random_checkpoint

HIDDEN, HEADS, MLP = 1024, 16, 2752
PARAMS_PER_LAYER = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP

# VmHWM (peak RSS of this address space) rather than ru_maxrss, which Linux carries over from the parent
# process across fork + exec.
MEASURE = """
import json, sys, time, torch
from chameleon_serve.model.loading import load_checkpoint
def status_mib(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024
with torch.device("meta"):  # the first meta-device init (normal_) imports ~70 MB of torch modules: a fixed cost
    torch.nn.Embedding(1, 1)
base = status_mib("VmRSS")
start = time.perf_counter()
loaded = load_checkpoint(sys.argv[1], device="cpu", dtype=getattr(torch, sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "base_mb": base, "peak_mb": status_mib("VmHWM")}))
"""

LAYOUTS = {  # name -> write_random_checkpoint arguments
    "hf (1 file)": dict(format="hf"),
    "hf (4 shards)": dict(format="hf", hf_num_shards=4),
    "meta (mp=1)": dict(format="meta"),
    "meta (mp=2)": dict(format="meta", meta_model_parallel=2),
}


def weights_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.suffix in (".safetensors", ".pth", ".ckpt"))


def measure(root: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=300, help="approximate float32 weight size (default 300)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="dtype to load into")
    args = parser.parse_args()
    layers = max(1, round(args.size_mb * 1e6 / 4 / PARAMS_PER_LAYER))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in LAYOUTS.items():
            start = time.perf_counter()
            root = write_random_checkpoint(
                Path(tmp) / name.split()[0] / str(len(rows)), hidden_size=HIDDEN, num_heads=HEADS,
                intermediate_size=MLP, num_layers=layers, **kwargs,
            )
            written = time.perf_counter() - start
            size_mb = weights_bytes(root) / 1e6
            r = measure(root, args.dtype)
            growth = r["peak_mb"] * 1.048576 - r["base_mb"] * 1.048576  # MiB -> MB, like size_mb
            rows.append((name, size_mb, written, r["seconds"], r["base_mb"], r["peak_mb"], growth / size_mb))

    print(f"\n{layers} layers x hidden {HIDDEN}, loaded as {args.dtype} on CPU; RSS in MiB, sizes in MB")
    header = ("layout", "weights MB", "write s", "load s", "base RSS", "peak RSS", "growth/size")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, size, written, seconds, base, peak, ratio in rows:
        print(f"| {name} | {size:.0f} | {written:.1f} | {seconds:.2f} | {base:.0f} | {peak:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
