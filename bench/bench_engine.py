"""End-to-end engine benchmark on a random checkpoint: single stream vs. transformers, batching, images, TTFT.

    python bench/bench_engine.py --size 10m            # ~10M parameters (hidden 256, 6 layers, vocab 8192)
    python bench/bench_engine.py --size 50m --json out.json
    python bench/bench_engine.py --quick               # tiny model and settings: seconds, for the smoke test

Everything is measured in one process on one checkpoint written to a temp dir, with the same torch
thread count for our engine and for transformers. CPU timings on a shared machine are noisy, so every
number is the median of several repeats, the repeats of competing variants are interleaved (engine,
transformers, engine, ...), and the report leads with ratios against a baseline measured in the same run.

What is measured (all text is greedy with ignore_eos, so every request produces exactly its budget):
1. single stream: one text request (prompt ~32 tokens, N new tokens), end to end (prefill included),
   against `ChameleonForConditionalGeneration.generate` with its KV cache on the same prompt;
2. aggregate generated tokens/s with 1, 4, 16, 64 requests submitted at once, and the ratio to 1;
3. seconds per image (image-only output) without CFG, with plain CFG (2 rows) and text_image CFG (3 rows);
4. time to first token of probe requests submitted one at a time while 16 other requests stream,
   against the same probe on an idle engine.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from a checkout

from chameleon_serve.engine import (  # noqa: E402
    CFGMode, Engine, EngineConfig, Error, Finished, GenerationRequest, ImageDone, ImageParams, OutputMode,
    SamplingParams,
)
from chameleon_serve.model.config import VQConfig  # noqa: E402
from chameleon_serve.testing import write_random_checkpoint  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)
PROMPT_TEXT = (
    "Describe the image. Here is a drawing of a house with a blue door and two windows, a cat on a red mat, "
    "a sunset over the sea with boats, and the quick brown fox that jumps over the lazy dog. "
)

# A 32 px VQGAN with one downsampling level: a 16x16 grid, so an image is 256 tokens (the real model: 1024).
VQ_256 = VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1,
                  latent_channels=32, num_embeddings=1024, embed_dim=32)
# Three downsampling levels: a 4x4 grid, 16 tokens per image, for --quick.
VQ_16 = VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 1, 1, 2), num_res_blocks=1,
                 latent_channels=32, num_embeddings=64, embed_dim=8)
NUM_SPECIALS = 8  # Chameleon's special tokens the test tokenizer adds (see tokenizers.train.SPECIAL_TOKENS)


@dataclass
class Size:
    """A checkpoint shape plus the workload run on it."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int  # text BPE + image codes + specials, as in the real 65536-entry vocabulary
    vq: VQConfig
    intermediate_size: int | None = None  # None: Llama's 8/3 * hidden rounded up to 64
    prompt_tokens: int = 32
    new_tokens: int = 256  # single-stream budget
    batch_new_tokens: int = 128  # per request in the concurrency sweep
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    load_streams: int = 16  # requests streaming while TTFT is probed
    probes: int = 24
    probe_new_tokens: int = 8
    repeats: int = 3
    single_repeats: int = 5  # the headline comparison gets more pairs
    max_sequences: int = 64
    max_model_len: int = 512  # engine cache rows: enough for prompt + budget, keeps 64 rows small


SIZES = {
    # Vocabulary as a realistic share of a small model: lm_head + embeddings are ~45% of the weights,
    # so the vocabulary-wide work of every step (lm_head, masking, argmax) weighs what it would.
    "10m": Size(hidden_size=256, num_layers=6, num_heads=8, vocab_size=8192, vq=VQ_256),
    "50m": Size(hidden_size=512, num_layers=10, num_heads=8, vocab_size=16384, vq=VQ_256),
    "quick": Size(hidden_size=64, num_layers=2, num_heads=4, vocab_size=300 + 64 + NUM_SPECIALS, vq=VQ_16,
                  prompt_tokens=16, new_tokens=16, batch_new_tokens=8, concurrency=(1, 4), load_streams=4,
                  probes=3, probe_new_tokens=2, repeats=1, single_repeats=1, max_sequences=8, max_model_len=128),
}


# ---- helpers ---------------------------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with few samples, an observed value rather than an interpolation."""
    s = sorted(xs)
    return float(s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))])


def make_prompt(engine: Engine, n: int, variant: int = 0) -> list[int]:
    """A text prompt of exactly n tokens (BOS included); `variant` makes concurrent prompts differ."""
    words = PROMPT_TEXT.split()
    rng = random.Random(variant)
    rng.shuffle(words)
    ids = engine.encode_text(" ".join(words * 8))
    assert len(ids) >= n, "the prompt text is too short for the requested prompt length"
    return ids[:n]


def text_request(prompt: list[int], max_tokens: int, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=prompt, max_tokens=max_tokens, output=OutputMode.TEXT, text=GREEDY,
                             ignore_eos=True, **kw)


@dataclass
class Timed:
    submitted: float
    first_event: float
    ended: float
    finished: Finished

    @property
    def total(self) -> float:
        return self.ended - self.submitted

    @property
    def ttft(self) -> float:
        return self.first_event - self.submitted


def consume(handle, submitted: float) -> Timed:
    """Reads a request's events as they arrive; fails loudly on an engine error."""
    first = None
    for event in handle:
        now = time.perf_counter()
        first = first or now
        if isinstance(event, Error):
            raise RuntimeError(f"request failed: {event.message}")
        if isinstance(event, Finished):
            return Timed(submitted, first, now, event)
    raise RuntimeError("event stream ended without Finished")


def run_one(engine: Engine, request: GenerationRequest) -> Timed:
    t0 = time.perf_counter()
    return consume(engine.submit(request), t0)


def run_many(engine: Engine, requests: list[GenerationRequest]) -> list[Timed]:
    """Submits all at once (as fast as the caller can), then reads each stream on its own thread."""
    results: list[Timed | None] = [None] * len(requests)
    errors: list[BaseException] = []
    submitted = []
    for r in requests:
        submitted.append((time.perf_counter(), engine.submit(r)))

    def read(i: int) -> None:
        try:
            results[i] = consume(submitted[i][1], submitted[i][0])
        except BaseException as e:  # re-raised on the main thread
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


# ---- the measurements ------------------------------------------------------------------------------------

def bench_single_stream(engine: Engine, hf_model, size: Size, prompt: list[int]) -> dict:
    n = size.new_tokens
    input_ids = torch.tensor([prompt])
    attention_mask = torch.ones_like(input_ids)

    def ours() -> float:
        timed = run_one(engine, text_request(prompt, n))
        assert timed.finished.usage.completion_tokens == n
        return timed.total

    def theirs() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = hf_model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n,
                                    min_new_tokens=n, do_sample=False, use_cache=True,
                                    pad_token_id=hf_model.config.pad_token_id or 0)
            dt = time.perf_counter() - t0
        assert out.shape[1] == len(prompt) + n, out.shape
        return dt

    ours(), theirs()  # warm-up: allocator, thread pool, lazy tables, generate's first-call setup
    engine_times, hf_times = [], []
    for _ in range(size.single_repeats):  # interleaved so drifting machine load hits both alike
        engine_times.append(ours())
        hf_times.append(theirs())
    engine_tps, hf_tps = n / median(engine_times), n / median(hf_times)
    return {
        "new_tokens": n, "prompt_tokens": len(prompt),
        "engine_tokens_per_s": engine_tps, "transformers_tokens_per_s": hf_tps,
        "ratio": engine_tps / hf_tps,
        # each engine run against the transformers run right after it: robust to slow load drifts
        "paired_ratio_median": median([h / e for e, h in zip(engine_times, hf_times)]),
        "engine_seconds": engine_times, "transformers_seconds": hf_times,
    }


def bench_concurrency(engine: Engine, size: Size) -> dict:
    n = size.batch_new_tokens
    prompts = [make_prompt(engine, size.prompt_tokens, variant=i) for i in range(max(size.concurrency))]
    run_many(engine, [text_request(p, n) for p in prompts[: max(size.concurrency)]])  # warm-up at full width
    rates: dict[int, list[float]] = {c: [] for c in size.concurrency}
    for _ in range(size.repeats):
        for c in size.concurrency:  # round-robin over levels: noise spreads over all of them
            timed = run_many(engine, [text_request(p, n) for p in prompts[:c]])
            tokens = sum(t.finished.usage.completion_tokens for t in timed)
            assert tokens == c * n
            wall = max(t.ended for t in timed) - min(t.submitted for t in timed)
            rates[c].append(tokens / wall)
    base = median(rates[size.concurrency[0]])
    return {
        "new_tokens_per_request": n,
        "levels": {str(c): {"tokens_per_s": median(r), "ratio_to_1": median(r) / base, "samples": r}
                   for c, r in rates.items()},
    }


def bench_images(engine: Engine, size: Size, prompt: list[int]) -> dict:
    block = engine.layout.block_len

    def one(cfg: CFGMode, seed: int) -> float:
        request = GenerationRequest(prompt_tokens=prompt, max_tokens=block, output=OutputMode.IMAGE, seed=seed,
                                    image=ImageParams(cfg=cfg))
        t0 = time.perf_counter()
        events = engine.submit(request).result()
        dt = time.perf_counter() - t0
        assert isinstance(events[-1], Finished), events[-1]
        assert sum(isinstance(e, ImageDone) for e in events) == 1
        return dt

    modes = [CFGMode.NONE, CFGMode.PLAIN, CFGMode.TEXT_IMAGE]
    for m in modes:
        one(m, seed=0)
    seconds: dict[str, list[float]] = {m.value: [] for m in modes}
    for r in range(size.repeats):
        for m in modes:
            seconds[m.value].append(one(m, seed=r + 1))
    base = median(seconds["none"])
    return {
        "image_tokens": engine.info.image_tokens,
        "modes": {m: {"seconds_per_image": median(s), "ratio_to_no_cfg": median(s) / base, "samples": s}
                  for m, s in seconds.items()},
    }


def bench_ttft(engine: Engine, size: Size) -> dict:
    """Probes arrive one at a time (random gaps) while `load_streams` requests keep streaming.

    A probe asks for logprobs so that every token yields an event: plain text events are held back while
    a token ends inside a UTF-8 character, which would add noise unrelated to scheduling.
    """
    probe_prompts = [make_prompt(engine, size.prompt_tokens, variant=1000 + i) for i in range(size.probes)]

    def probe(i: int) -> float:
        return run_one(engine, text_request(probe_prompts[i], size.probe_new_tokens, logprobs=True)).ttft

    probe(0)  # warm-up
    idle = [probe(i) for i in range(size.probes)]

    stop = threading.Event()
    streaming = [threading.Event() for _ in range(size.load_streams)]
    errors: list[BaseException] = []

    def keep_streaming(k: int) -> None:
        """One background stream slot: when its request ends, a new one takes its place at once."""
        prompt = make_prompt(engine, size.prompt_tokens, variant=2000 + k)
        budget = size.max_model_len - size.prompt_tokens - 1
        try:
            while not stop.is_set():
                handle = engine.submit(text_request(prompt, budget))
                for event in handle:
                    streaming[k].set()
                    if stop.is_set():
                        handle.cancel()
                        break
                    if isinstance(event, (Finished, Error)):
                        break
        except BaseException as e:
            errors.append(e)

    keepers = [threading.Thread(target=keep_streaming, args=(k,), daemon=True) for k in range(size.load_streams)]
    for t in keepers:
        t.start()
    try:
        for ev in streaming:
            if not ev.wait(timeout=300):
                raise RuntimeError("background streams did not start")
        rng = random.Random(0)
        loaded, running_at_submit = [], []
        for i in range(size.probes):
            time.sleep(rng.uniform(0.0, 0.05))  # do not always land on the same phase of a decode step
            running_at_submit.append(engine.stats().running)
            loaded.append(probe(i))
    finally:
        stop.set()
        for t in keepers:
            t.join(timeout=120)
    if errors:
        raise errors[0]
    p50_idle = percentile(idle, 50)
    return {
        "load_streams": size.load_streams, "probes": size.probes,
        "idle_p50_s": p50_idle, "idle_p95_s": percentile(idle, 95),
        "loaded_p50_s": percentile(loaded, 50), "loaded_p95_s": percentile(loaded, 95),
        "loaded_p50_ratio_to_idle": percentile(loaded, 50) / p50_idle,
        "running_at_submit_median": median(running_at_submit),
        "idle_samples": idle, "loaded_samples": loaded,
    }


# ---- report ----------------------------------------------------------------------------------------------

TARGET_SINGLE = 1.5  # engine vs. transformers, single stream, both sizes
TARGET_BATCH_16 = 5.0  # aggregate at 16 concurrent vs. 1, on the 50M


def markdown(result: dict) -> str:
    s, c, im, tt = result["single_stream"], result["concurrency"], result["images"], result["ttft"]
    rows = [
        ("single stream, engine (tok/s)", f"{s['engine_tokens_per_s']:.1f}", ""),
        ("single stream, transformers generate (tok/s)", f"{s['transformers_tokens_per_s']:.1f}", ""),
        ("single stream, engine / transformers (ratio of medians; median of paired runs)", "",
         f"**{s['ratio']:.2f}x**; {s.get('paired_ratio_median', 0.0):.2f}x"),
    ]
    for level, v in c["levels"].items():
        rows.append((f"aggregate, {level} concurrent (tok/s)", f"{v['tokens_per_s']:.1f}", f"{v['ratio_to_1']:.2f}x vs 1"))
    for mode, v in im["modes"].items():
        rows.append((f"image ({im['image_tokens']} tokens), cfg={mode} (s/image)", f"{v['seconds_per_image']:.3f}",
                     f"{v['ratio_to_no_cfg']:.2f}x vs no CFG"))
    rows += [
        ("TTFT idle p50 / p95 (ms)", f"{tt['idle_p50_s'] * 1e3:.1f} / {tt['idle_p95_s'] * 1e3:.1f}", ""),
        (f"TTFT with {tt['load_streams']} streaming, p50 / p95 (ms)",
         f"{tt['loaded_p50_s'] * 1e3:.1f} / {tt['loaded_p95_s'] * 1e3:.1f}", f"{tt['loaded_p50_ratio_to_idle']:.2f}x idle p50"),
    ]
    m = result["meta"]
    out = [f"### {m['size']}: {m['parameters'] / 1e6:.1f}M parameters (hidden {m['hidden_size']}, {m['num_layers']} layers, "
           f"{m['num_heads']} heads, vocab {m['vocab_size']}), torch {m['torch']}, {m['threads']} threads, "
           f"median of {m['repeats']} ({m['workload']['single_repeats']} single-stream pairs)", "",
           "| metric | value | ratio |", "| --- | ---: | ---: |"]
    out += [f"| {a} | {b} | {r} |" for a, b, r in rows]
    out += ["", f"Weight memory order chosen by the engine at start: {m.get('weight_layouts') or 'as loaded (not tuned)'}", ""]
    for name, ok in result["targets"].items():
        out.append(f"- target {name}: {'met' if ok else 'MISSED'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["10m", "50m"], default="10m")
    ap.add_argument("--quick", action="store_true", help="tiny model and workload (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both sides)")
    ap.add_argument("--repeats", type=int, help="override the size's repeat count")
    ap.add_argument("--skip-transformers", action="store_true", help="no transformers comparison (ratio reported as 0)")
    args = ap.parse_args(argv)

    size_name = "quick" if args.quick else args.size
    size = SIZES[size_name]
    if args.repeats:
        size.repeats = size.single_repeats = args.repeats
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        path = write_random_checkpoint(
            tmp, format="hf", hidden_size=size.hidden_size, num_layers=size.num_layers, num_heads=size.num_heads,
            intermediate_size=size.intermediate_size, vq=size.vq, text_vocab_size=size.vocab_size - size.vq.num_embeddings - NUM_SPECIALS,
            init_std=0.02, max_position_embeddings=1024, seed=0,
        )
        engine = Engine.from_checkpoint(path, config=EngineConfig(
            max_sequences=size.max_sequences, max_queue=max(256, 2 * size.max_sequences),
            max_model_len=size.max_model_len, dtype="float32", device="cpu")).start()
        hf_model = None
        if not args.skip_transformers:
            from transformers import ChameleonForConditionalGeneration
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # the VQ decoder keys it does not know are expected
            hf_model = ChameleonForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        try:
            params = sum(p.numel() for p in engine.runner.model.parameters())
            prompt = make_prompt(engine, size.prompt_tokens)
            result = {"meta": {
                "size": size_name, "parameters": params, "hidden_size": size.hidden_size, "num_layers": size.num_layers,
                "num_heads": size.num_heads, "vocab_size": engine.info.vocab_size, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "python": platform.python_version(), "repeats": size.repeats,
                "workload": {k: v for k, v in asdict(size).items() if k != "vq"},
                "weight_layouts": dict(engine.runner.weight_layouts),  # memory order the engine chose at start
            }}
            if hf_model is not None:
                result["single_stream"] = bench_single_stream(engine, hf_model, size, prompt)
            else:
                result["single_stream"] = {"engine_tokens_per_s": 0.0, "transformers_tokens_per_s": 0.0, "ratio": 0.0}
            print(f"single stream done: {result['single_stream']['ratio']:.2f}x transformers", file=sys.stderr)
            result["concurrency"] = bench_concurrency(engine, size)
            print("concurrency done", file=sys.stderr)
            result["images"] = bench_images(engine, size, prompt)
            print("images done", file=sys.stderr)
            result["ttft"] = bench_ttft(engine, size)
        finally:
            engine.shutdown(timeout=5)
    levels = result["concurrency"]["levels"]
    result["targets"] = {f"single stream >= {TARGET_SINGLE}x transformers": result["single_stream"]["ratio"] >= TARGET_SINGLE}
    if "16" in levels and size_name == "50m":
        result["targets"][f"16 concurrent >= {TARGET_BATCH_16}x of 1 (50m)"] = levels["16"]["ratio_to_1"] >= TARGET_BATCH_16
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
