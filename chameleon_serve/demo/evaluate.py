"""Measures the demo model through the real engine, at the server's default sampling settings.

    python -m chameleon_serve.demo.evaluate --model chameleon_serve/demo_model --samples 100

Every sample is fresh: scenes, positions, sizes and phrasings come from a seed the recipe never
trains on. Figures:
- generation: the image's background colour, shape colour and shape class, read from its PIXELS
  with the world's classifier (`world.classify`), against what the prompt asked for;
- captions: the answer to a question about a rendered image names the right shape and both colours;
- interleaved: "draw A and then B" gives text, image, text, image (and both images are right);
- chat: a plain-text request gets a text answer and no image;
- VQGAN: reconstruction error of the shipped image tokenizer on fresh scenes.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import time
from pathlib import Path

import torch
from PIL import Image

from chameleon_serve.engine import (Engine, EngineConfig, Error, Finished, GenerationRequest, ImageDone, OutputMode,
                                    TextDelta)
from chameleon_serve.tokenizers.prompt import ChatMessage

from .data import Example, chat_example, describe_example, generate_example, interleave_example
from .world import COLOURS, SHAPES, Scene, classify, random_scene, render

EVAL_SEED = 987_654  # the recipe trains on seeds near 0: these samples are new
CAPTION = re.compile(r"\b(%s) (%s) on an? (%s) background" % ("|".join(COLOURS), "|".join(SHAPES), "|".join(COLOURS)))


def parse_caption(text: str) -> tuple[str, str, str] | None:
    """'A red circle on a blue background.' -> ('circle', 'red', 'blue')."""
    m = CAPTION.search(text.lower())
    return (m.group(2), m.group(1), m.group(3)) if m else None


def run_requests(engine: Engine, examples: list[Example], output: OutputMode, max_tokens: int) -> list[list]:
    """Submits every example (the engine batches them) and returns each one's event list, in order."""
    handles = []
    for i, ex in enumerate(examples):
        content = [render(p, engine.info.image_width) if isinstance(p, Scene) else p for p in ex.user]
        prompt = engine.build_chat_prompt([ChatMessage("user", content)])
        # Default GenerationRequest sampling = the server's defaults (text and image: temperature 0.7, top_p 0.9).
        handles.append(engine.submit(GenerationRequest(prompt_tokens=prompt, max_tokens=max_tokens, output=output,
                                                       seed=i)))
    return [list(h) for h in handles]


def segments(events: list) -> list[tuple[str, object]]:
    """Events -> [("text", str) | ("image", PIL image)], merging adjacent text deltas, dropping blank text."""
    out: list[tuple[str, object]] = []
    for ev in events:
        if isinstance(ev, TextDelta):
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + ev.text)
            else:
                out.append(("text", ev.text))
        elif isinstance(ev, ImageDone):
            out.append(("image", Image.open(io.BytesIO(ev.png)).convert("RGB")))
        elif isinstance(ev, Error):
            raise RuntimeError(f"engine error: {ev.message}")
    return [(k, v) for k, v in out if k == "image" or v.strip()]


def image_scores(image: Image.Image | None, scene: Scene) -> dict[str, bool]:
    if image is None:
        return {"background": False, "colour": False, "shape": False}
    r = classify(image)
    return {"background": r.background == scene.background, "colour": r.colour == scene.colour,
            "shape": r.shape == scene.shape}


def rate(values: list[bool]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


def evaluate(model: str, samples: int = 100, seed: int = EVAL_SEED, save_dir: str | None = None,
             max_sequences: int = 8) -> dict:
    rng = random.Random(seed)
    t0 = time.time()
    # a queue deep enough for every sample: requests are all submitted at once and batched by the engine
    engine = Engine.from_checkpoint(model, config=EngineConfig(max_sequences=max_sequences, max_queue=4 * samples + 64)).start()
    save = Path(save_dir) if save_dir else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    try:
        # 1. text -> image: the prompt always names a background so all three attributes are checked
        gen = [generate_example(rng, random_scene(rng), with_background=True) for _ in range(samples)]
        gen_scores, gen_images = [], 0
        for i, (ex, events) in enumerate(zip(gen, run_requests(engine, gen, OutputMode.INTERLEAVED, 160))):
            images = [v for k, v in segments(events) if k == "image"]
            gen_images += bool(images)
            gen_scores.append(image_scores(images[0] if images else None, ex.answer[-1]))
            if save and images and i < 24:
                images[0].save(save / f"generate_{i:03d}_{ex.answer[-1].colour}_{ex.answer[-1].shape}_on_"
                                      f"{ex.answer[-1].background}.png")

        # 2. image -> text
        cap = [describe_example(rng, random_scene(rng)) for _ in range(samples)]
        cap_ok, cap_parts = [], {"shape": [], "colour": [], "background": []}
        for ex, events in zip(cap, run_requests(engine, cap, OutputMode.INTERLEAVED, 48)):
            scene = next(p for p in ex.user if isinstance(p, Scene))
            text = "".join(v for k, v in segments(events) if k == "text")
            got = parse_caption(text)
            ok = [got is not None and g == w for g, w in zip(got or (None,) * 3, (scene.shape, scene.colour,
                                                                                     scene.background))]
            for key, v in zip(("shape", "colour", "background"), ok):
                cap_parts[key].append(v)
            cap_ok.append(all(ok) and not any(k == "image" for k, _ in segments(events)))

        # 3. interleaved: sentence, image, sentence, image
        n_inter = max(1, samples // 2)
        inter = [interleave_example(rng) for _ in range(n_inter)]
        structure, inter_right = [], []
        for i, (ex, events) in enumerate(zip(inter, run_requests(engine, inter, OutputMode.INTERLEAVED, 320))):
            segs = segments(events)
            kinds = [k for k, _ in segs]
            structure.append(kinds == ["text", "image", "text", "image"])
            if kinds == ["text", "image", "text", "image"]:
                # each image must match the shape and colour asked for and the background its own sentence
                # announced (the prompt may leave the background to the model)
                for (_, said), (_, im), asked in zip(segs[0::2], segs[1::2], [ex.answer[1], ex.answer[3]]):
                    r, claim = classify(im), parse_caption(said)
                    inter_right.append(claim is not None and (r.shape, r.colour) == (asked.shape, asked.colour)
                                       and (r.shape, r.colour, r.background) == claim)
                if save and i < 8:
                    for j, (_, im) in enumerate(s for s in segs if s[0] == "image"):
                        im.save(save / f"interleave_{i:03d}_{j}.png")

        # 4. plain chat: text, no image
        chat = [chat_example(rng) for _ in range(max(1, samples // 5))]
        chat_ok = []
        for events in run_requests(engine, chat, OutputMode.INTERLEAVED, 64):
            kinds = [k for k, _ in segments(events)]
            finished = [e for e in events if isinstance(e, Finished)]
            chat_ok.append(kinds == ["text"] and bool(finished) and finished[0].finish_reason == "stop")

        # 5. the shipped VQGAN on fresh scenes
        from .train_vqgan import evaluate_vqgan

        vq = evaluate_vqgan(engine.image_tokenizer.vqgan, n=256, seed=seed + 1)
    finally:
        engine.shutdown()

    return {
        "samples": samples,
        "seed": seed,
        "generation": {
            "image_made": rate([True] * gen_images + [False] * (samples - gen_images)),
            "background_acc": rate([s["background"] for s in gen_scores]),
            "shape_colour_acc": rate([s["colour"] for s in gen_scores]),
            "shape_acc": rate([s["shape"] for s in gen_scores]),
            "all_three_acc": rate([all(s.values()) for s in gen_scores]),
        },
        "captions": {
            "all_right_acc": rate(cap_ok),
            **{f"{k}_acc": rate(v) for k, v in cap_parts.items()},
        },
        "interleaved": {
            "requests": n_inter,
            "structure_rate": rate(structure),
            "images_all_right_acc": rate(inter_right),
        },
        "chat": {"requests": len(chat), "text_only_rate": rate(chat_ok)},
        "vqgan": vq,
        "eval_time_s": round(time.time() - t0, 1),
    }


def write_card_section(model: str, result: dict, samples: int) -> None:
    """Replaces the model card's "## Evaluation" section with these figures."""
    card = Path(model) / "README.md"
    text = card.read_text() if card.exists() else ""
    text = text.split("\n## Evaluation")[0].rstrip() + "\n"
    g, c, i, ch = result["generation"], result["captions"], result["interleaved"], result["chat"]
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    text += f"""
## Evaluation

`python -m chameleon_serve.demo.evaluate --model {model} --samples {samples} --card`: fresh scenes, positions,
sizes and phrasings (seed {result['seed']}), through the engine at the server's default sampling (text and
image temperature 0.7, top_p 0.9, no CFG). Generated images are judged from their pixels.

| what | result |
| --- | --- |
| text -> image: background colour right | {pct(g['background_acc'])} |
| text -> image: shape colour right | {pct(g['shape_colour_acc'])} |
| text -> image: shape right | {pct(g['shape_acc'])} |
| text -> image: all three right | {pct(g['all_three_acc'])} |
| image -> text: caption names shape and both colours | {pct(c['all_right_acc'])} (shape {pct(c['shape_acc'])}, colour {pct(c['colour_acc'])}, background {pct(c['background_acc'])}) |
| "draw A and then B": text, image, text, image | {pct(i['structure_rate'])} of {i['requests']} (images right, as asked and as announced: {pct(i['images_all_right_acc'])}) |
| plain chat: text only, ends by itself | {pct(ch['text_only_rate'])} of {ch['requests']} |
| VQGAN reconstruction, 256 fresh scenes | mean abs error {result['vqgan']['recon_mae_255']} / 255, {pct(result['vqgan']['recon_palette_pixel_acc'])} of pixels keep their palette colour |
"""
    card.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description="Evaluate the demo model through the engine on fresh samples.")
    ap.add_argument("--model", default="chameleon_serve/demo_model")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-samples", default=None, help="folder for some generated PNGs")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--card", action="store_true", help="write the figures into the model card (README.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = evaluate(args.model, args.samples, args.seed, args.save_samples)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.card:
        write_card_section(args.model, result, args.samples)


if __name__ == "__main__":
    main()
