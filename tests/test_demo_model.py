"""The demo model that ships in the repo: a real HF Chameleon checkpoint that really works.

It loads with our loader and with transformers' ChameleonForConditionalGeneration (same text logits,
same image codes), and through the real engine, at the server's default sampling settings, it draws
what it is asked for (checked from pixels) and describes a rendered picture correctly.
"""
from pathlib import Path

import pytest
import torch

from chameleon_serve.demo.evaluate import parse_caption, segments
from chameleon_serve.demo.world import Scene, classify, render
from chameleon_serve.engine import Engine, EngineConfig, GenerationRequest, OutputMode
from chameleon_serve.model.loading import load_checkpoint
from chameleon_serve.tokenizers.prompt import ChatMessage

DEMO = Path(__file__).resolve().parent.parent / "chameleon_serve" / "demo_model"


def test_shipped_checkpoint_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert sum(files.values()) < 12 * 2**20


def test_shipped_checkpoint_loads_in_transformers_with_the_same_text_logits():
    import transformers
    ours = load_checkpoint(DEMO, device="cpu", dtype=torch.float32)
    theirs = transformers.ChameleonForConditionalGeneration.from_pretrained(DEMO, dtype=torch.float32).eval()
    image_ids = set(theirs.model.vocabulary_mapping.image_tokens)
    text = torch.tensor([i for i in range(ours.config.vocab_size) if i not in image_ids])
    assert len(image_ids) == ours.vqgan.cfg.num_embeddings
    tokens = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours.model.logits(ours.model(tokens))[..., text]
        b = theirs(input_ids=tokens).logits[..., text]
    assert (a - b).abs().max() / b.abs().max() < 1e-4
    # the VQ encoder transformers has gives the same codes as ours on a picture of the world
    pixels = torch.from_numpy(__import__("numpy").asarray(render(Scene("square", "red", "blue"), ours.vqgan.cfg.resolution),
                                                          dtype="float32")).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(theirs.model.vqmodel.encode(pixels).image_tokens.view(1, -1), ours.vqgan.encode(pixels))


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    engine = Engine.from_checkpoint(DEMO, config=EngineConfig(max_sequences=8)).start()
    yield engine
    engine.shutdown()


def ask(engine, content, output=OutputMode.INTERLEAVED, max_tokens=160, seed=0):
    prompt = engine.build_chat_prompt([ChatMessage("user", content)])
    handle = engine.submit(GenerationRequest(prompt_tokens=prompt, max_tokens=max_tokens, output=output, seed=seed))
    return handle


def test_vq_round_trip_is_stable_on_the_trained_tokenizer():
    """encode(decode(codes)) gives back the same picture, so a generated image fed back in a follow-up
    turn means what it showed. (Several codes draw the same flat colour, so it is the picture that is
    stable, not every code.)"""
    import random

    import numpy as np

    from chameleon_serve.demo.world import random_scene
    from chameleon_serve.tokenizers import load_tokenizers

    ckpt = load_checkpoint(DEMO)
    _, image_tokenizer = load_tokenizers(ckpt.tokenizer_path, ckpt.vqgan)
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(16)]
    codes = image_tokenizer.encode([render(s, image_tokenizer.resolution) for s in scenes])
    first = image_tokenizer.decode_codes(codes)
    again = image_tokenizer.decode_codes(image_tokenizer.encode(first))
    for a, b in zip(first, again):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        # less than the VQGAN's own reconstruction error on fresh renders (5.7/255): a fixed point, not a drift
        assert diff.mean() < 5, f"round trip moved pixels by {diff.mean():.1f}/255 on average"
        read_a, read_b = classify(a), classify(b)
        assert (read_a.shape, read_a.colour, read_a.background) == (read_b.shape, read_b.colour, read_b.background)


def test_generated_images_have_the_asked_colours_and_shape(engine):
    asks = [Scene("circle", "red", "blue"), Scene("square", "yellow", "black"), Scene("triangle", "white", "purple"),
            Scene("circle", "green", "orange")]
    handles = [ask(engine, f"draw a {s.colour} {s.shape} on a {s.background} background", seed=i)
               for i, s in enumerate(asks)]
    right = 0
    for scene, handle in zip(asks, handles):
        images = [v for k, v in segments(list(handle)) if k == "image"]
        assert len(images) == 1
        r = classify(images[0])
        right += (r.shape, r.colour, r.background) == (scene.shape, scene.colour, scene.background)
    assert right >= 3, f"{right}/4 generated images match the prompt"


def test_rendered_images_are_described_correctly(engine):
    scenes = [Scene("triangle", "orange", "green", 0.4, 0.6, 0.5), Scene("square", "blue", "white", 0.6, 0.4, 0.35),
              Scene("circle", "purple", "yellow", 0.5, 0.5, 0.65), Scene("square", "black", "red", 0.35, 0.35, 0.6)]
    res = engine.info.image_width
    handles = [ask(engine, [render(s, res), "what is in this image?"], max_tokens=40, seed=i) for i, s in enumerate(scenes)]
    right = 0
    for scene, handle in zip(scenes, handles):
        text = "".join(v for k, v in segments(list(handle)) if k == "text")
        right += parse_caption(text) == (scene.shape, scene.colour, scene.background)
    assert right >= 3, f"{right}/4 captions right"


def test_interleaved_request_gives_text_image_text_image(engine):
    handles = [ask(engine, "draw a red circle and then a blue square", max_tokens=320, seed=i) for i in range(3)]
    kinds = [[k for k, _ in segments(list(h))] for h in handles]
    assert sum(k == ["text", "image", "text", "image"] for k in kinds) >= 2, kinds


def test_plain_chat_gets_a_text_answer(engine):
    events = list(ask(engine, "hello! what can you do?", max_tokens=64))
    segs = segments(events)
    assert [k for k, _ in segs] == ["text"] and "draw" in segs[0][1].lower()


def test_the_server_serves_the_demo_model_by_default():
    """`chameleon-serve serve` with no --model: draws the asked picture and describes a sent one, over HTTP."""
    import base64
    import io

    import httpx
    from PIL import Image

    try:  # works whether or not tests/ is a package
        from .live_server import live_server
    except ImportError:
        from live_server import live_server

    def post(server, content, seed):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 160, "seed": seed}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with live_server("--max-sequences", "4") as server:
        assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "demo_model"
        right = 0
        for seed in range(3):
            parts = post(server, "Draw a yellow triangle on a blue background.", seed)
            urls = [p["image_url"]["url"] for p in parts if isinstance(p, dict) and p["type"] == "image_url"]
            assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
            image = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
            r = classify(image)
            right += (r.shape, r.colour, r.background) == ("triangle", "yellow", "blue")
        assert right >= 2, f"{right}/3 served images right"

        buf = io.BytesIO()
        render(Scene("circle", "green", "white", 0.4, 0.6, 0.5), 32).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        answer = post(server, [{"type": "image_url", "image_url": {"url": url}},
                               {"type": "text", "text": "Describe the picture."}], 0)
        assert isinstance(answer, str) and parse_caption(answer) == ("circle", "green", "white"), answer
