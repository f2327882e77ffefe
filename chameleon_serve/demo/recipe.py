"""Regenerates the demo model that ships in the repo, from a seed, with one command:

    python -m chameleon_serve.demo.recipe --out chameleon_serve/demo_model --seed 0

Steps: (1) train the VQGAN image tokenizer on rendered scenes, (2) train the text BPE on the world's
sentences, (3) tokenize a fresh set of conversations with the project's own prompt code and train the
transformer on them, (4) write an HF checkpoint with `save_hf` (float16 weights, VQ encoder and
decoder included) and a model card. Loss curves go to runs/demo_<seed>/ as JSON lines.
`--tiny` runs every step at toy sizes in seconds (the tests use it so the recipe cannot rot).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chameleon_serve.model.loading import save_hf
from chameleon_serve.model.vqgan import VQModel
from chameleon_serve.tokenizers.image import ImageTokenizer
from chameleon_serve.tokenizers.text import TextTokenizer
from chameleon_serve.tokenizers.train import build_tokenizer

from .data import build_dataset, corpus_texts
from .train_transformer import make_config, train_transformer
from .train_vqgan import DEMO_VQ, evaluate_vqgan, train_vqgan


@dataclass
class Settings:
    vq_steps: int = 1200
    vq_batch: int = 16
    vocab_size: int = 1024  # all ids: 256 image codes + 8 specials + byte-level BPE text tokens
    corpus: int = 20000  # examples whose sentences train the BPE
    examples: int = 90000  # about two epochs
    steps: int = 7000
    batch: int = 24
    lr: float = 3e-3
    model_overrides: dict | None = None
    mix: dict | None = None  # kinds of example and their shares; None = data.MIX


TINY = Settings(vq_steps=4, vq_batch=4, vocab_size=600, corpus=500, examples=48, steps=3, batch=8,
                model_overrides=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2))


def round_to_float16(module: torch.nn.Module) -> torch.nn.Module:
    """Rounds float32 weights to float16 precision (staying float32), so what we use is what we ship."""
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return module


def run(out: str | Path, seed: int = 0, settings: Settings = Settings(), runs_dir: str | Path | None = None,
        reuse_vqgan: str | None = None, only_vqgan: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir) if runs_dir else Path("runs") / f"demo_{seed}"
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vq_cfg = DEMO_VQ
    if settings is TINY:  # the smallest VQGAN the blocks allow, to keep the smoke test fast
        from dataclasses import replace

        vq_cfg = replace(DEMO_VQ, resolution=16, channel_multiplier=(1, 1), latent_channels=32, num_embeddings=64,
                         embed_dim=16)

    # 1. VQGAN; its weights are rounded to float16 BEFORE any image is tokenized, so the shipped
    # checkpoint reproduces the training tokens exactly.
    if reuse_vqgan:  # development shortcut: a VQGAN state dict saved by an earlier run of this recipe
        vqgan = VQModel(vq_cfg)
        vqgan.load_state_dict(torch.load(reuse_vqgan))
        vqgan.eval()
        vq_summary = json.loads((Path(reuse_vqgan).parent / "summary.json").read_text())["vqgan"]
    else:
        vqgan, vq_summary = train_vqgan(vq_cfg, steps=settings.vq_steps, batch_size=settings.vq_batch, seed=seed,
                                        log_path=str(runs / "vqgan.jsonl"))
        round_to_float16(vqgan)
        vq_summary["after_float16"] = evaluate_vqgan(vqgan, seed=seed + 1000) if settings is not TINY else {}
        torch.save(vqgan.state_dict(), runs / "vqgan.pt")
        (runs / "summary.json").write_text(json.dumps({"vqgan": vq_summary}, indent=2))
        if only_vqgan:
            return {"vqgan": vq_summary}

    # 2. Text tokenizer: byte-level BPE over the world's sentences plus Chameleon's specials and image tokens.
    tok = build_tokenizer(corpus_texts(seed, settings.corpus), settings.vocab_size, vq_cfg.num_embeddings)
    tokenizer_file = runs / "tokenizer.json"
    tok.save(str(tokenizer_file))
    text_tokenizer = TextTokenizer(tok, source=str(tokenizer_file))
    image_tokenizer = ImageTokenizer(vqgan, text_tokenizer.image_vocab)

    # 3. Conversations -> tokens (the project's prompt builder), then the transformer.
    t_data = time.time()
    data = build_dataset(settings.examples, seed + 1, text_tokenizer, image_tokenizer, settings.mix)
    data_time = time.time() - t_data
    cfg = make_config(settings.vocab_size, vq_cfg, **(settings.model_overrides or {}))
    model, tf_summary = train_transformer(
        cfg, data, text_tokenizer.image_vocab.is_image_token, text_tokenizer.special.pad,
        steps=settings.steps, batch_size=settings.batch, lr=settings.lr, seed=seed,
        log_path=str(runs / "transformer.jsonl"))

    # 4. The checkpoint, in float16 (a few MB), and its card.
    save_hf(out, model.half(), vqgan.half(), tokenizer_file)
    total = time.time() - t0 + (vq_summary["train_time_s"] if reuse_vqgan else 0)  # count a reused stage 1 too
    summary = {"seed": seed, "total_time_s": round(total, 1), "data_time_s": round(data_time, 1),
               "vqgan": vq_summary, "transformer": tf_summary, "vqgan_reused_from": reuse_vqgan}
    (runs / "summary.json").write_text(json.dumps(summary, indent=2))
    write_card(out / "README.md", summary, runs)
    return summary


def _curve(path: Path, key: str, points: int = 8) -> str:
    """A few evenly spaced points of a logged loss curve, as 'step: value' pairs."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not recs:
        return "(no log)"
    pick = sorted({round(i * (len(recs) - 1) / (points - 1)) for i in range(points)})
    return ", ".join(f"{recs[i]['step']}: {recs[i][key]}" for i in pick)


def write_card(path: Path, s: dict, runs: Path) -> None:
    vq, tf = s["vqgan"], s["transformer"]
    reused = (f"\n  (This stage ran once, as step 1 of this same command and seed, and was loaded from `{s['vqgan_reused_from']}`"
              " while the later steps were tuned; its time is included in the total.)") if s.get("vqgan_reused_from") else ""
    path.write_text(f"""# chameleon-serve demo model

A tiny model in exactly Meta's Chameleon architecture and HF checkpoint layout (`ChameleonForConditionalGeneration`
keys, `vq_config`, `vocabulary_map`, VQ encoder *and* decoder under `model.vqmodel.*`), trained from scratch on
a synthetic world: one circle, square or triangle in red, green, blue, yellow, purple, orange, white or black on a
plain background of another of those colours. It draws such pictures from text, describes them, answers
"draw A and then B" with text, image, text, image, and makes a little small talk.

Regenerate (about 45 min on 2 quiet CPU cores, both used): `python -m chameleon_serve.demo.recipe --out chameleon_serve/demo_model --seed {s['seed']}`
Evaluate through the engine: `python -m chameleon_serve.demo.evaluate --model chameleon_serve/demo_model --samples 100`

Prompt format: `<s>` + user content + `<reserved08706>`; the answer ends with its own `<reserved08706>`.
An image is `<racm3:break>` + {DEMO_VQ.image_tokens} image tokens + `<eoss>`.

## Sizes
- VQGAN: {DEMO_VQ.resolution}x{DEMO_VQ.resolution} px -> {DEMO_VQ.grid_size}x{DEMO_VQ.grid_size} codes, codebook {DEMO_VQ.num_embeddings} x {DEMO_VQ.embed_dim}, base channels {DEMO_VQ.base_channels}, multipliers {list(DEMO_VQ.channel_multiplier)}.
- Transformer: {tf['parameters'] / 1e6:.2f}M parameters (see config.json); weights stored in float16.

## Training (seed {s['seed']}, total {s['total_time_s'] / 60:.1f} min)
- VQGAN: {vq['steps']} steps x {vq['batch_size']} images, L1 + L2 + VQ loss, dead codes re-initialised from encoder outputs; {vq['train_time_s'] / 60:.1f} min.{reused}
  Reconstruction loss (L1+L2, [-1, 1] scale) by step: {_curve(runs / 'vqgan.jsonl', 'rec_loss')}.
  On 256 fresh scenes after float16 rounding: {json.dumps(vq.get('after_float16', {}))}.
- Transformer: {tf['steps']} steps x {tf['batch_size']} conversations ({tf['examples']} examples, {tf['epochs']} epoch(s),
  {tf['tokens_seen']} tokens), AdamW (weight decay 0.1), warmup + cosine, z-loss 1e-5, dropout, QK-norm,
  loss on the answer only; {tf['train_time_s'] / 60:.1f} min.
  Answer cross-entropy by step: {_curve(runs / 'transformer.jsonl', 'loss')}.
  Final: text {tf['final_text_ce']}, image tokens {tf['final_image_ce']}.

Loss curves: `{runs}/vqgan.jsonl`, `{runs}/transformer.jsonl` (git-ignored).
""")


def main() -> None:
    ap = argparse.ArgumentParser(description="Regenerate the shipped demo model.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    # Both cores of a 2-core machine: 0.29 s per transformer step against 0.50 s with one thread (measured
    # on a quiet machine). On a machine busy with other work, --threads 1 avoids waiting for a busy core.
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="toy sizes, seconds: a smoke test of every step")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--reuse-vqgan", default=None, help="development: skip step 1, load runs/<...>/vqgan.pt")
    ap.add_argument("--only-vqgan", action="store_true", help="development: stop after step 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    summary = run(args.out, args.seed, TINY if args.tiny else Settings(), args.runs_dir, args.reuse_vqgan,
                  args.only_vqgan)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
