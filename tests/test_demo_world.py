"""The demo world: the renderer and the pixel classifier agree, captions parse, and the training tokens
are exactly what the project's prompt builder makes."""
import random

import pytest
import torch

from chameleon_serve.demo import data
from chameleon_serve.demo.evaluate import parse_caption
from chameleon_serve.demo.train_transformer import collate
from chameleon_serve.demo.world import COLOURS, MAX_SPAN, MIN_SPAN, SHAPES, Scene, classify, random_scene, render
from chameleon_serve.model.config import VQConfig
from chameleon_serve.model.vqgan import VQModel
from chameleon_serve.tokenizers.image import ImageTokenizer
from chameleon_serve.tokenizers.prompt import ChatMessage, build_chat_prompt
from chameleon_serve.tokenizers.text import TextTokenizer
from chameleon_serve.tokenizers.train import build_tokenizer


@pytest.mark.parametrize("resolution", [32, 64])
def test_render_then_classify_is_right_for_every_shape_and_colour_pair(resolution):
    placements = [  # smallest and largest boxes, in the corners and the middle
        (MIN_SPAN, MIN_SPAN / 2, MIN_SPAN / 2), (MIN_SPAN, 1 - MIN_SPAN / 2, 1 - MIN_SPAN / 2),
        (MAX_SPAN, MAX_SPAN / 2, 1 - MAX_SPAN / 2), (0.5, 0.5, 0.5),
    ]
    wrong = []
    for shape in SHAPES:
        for colour in COLOURS:
            for background in COLOURS:
                if colour == background:
                    continue
                for size, x, y in placements:
                    scene = Scene(shape, colour, background, x, y, size)
                    r = classify(render(scene, resolution))
                    if (r.shape, r.colour, r.background) != (shape, colour, background):
                        wrong.append((scene, r))
    assert not wrong, wrong[:5]


def test_random_scenes_classify_right_and_stay_inside_the_image():
    rng = random.Random(0)
    for _ in range(500):
        scene = random_scene(rng)
        assert scene.colour != scene.background
        assert MIN_SPAN <= scene.size <= MAX_SPAN
        assert scene.size / 2 <= scene.x <= 1 - scene.size / 2 and scene.size / 2 <= scene.y <= 1 - scene.size / 2
        r = classify(render(scene, 32))
        assert (r.shape, r.colour, r.background) == (scene.shape, scene.colour, scene.background)


def test_classifier_tells_shapes_apart_not_just_colours():
    # the same colours, three shapes: a classifier that guessed would get some of these wrong
    got = {classify(render(Scene(s, "red", "blue", 0.5, 0.5, 0.6), 32)).shape for s in SHAPES}
    assert got == set(SHAPES)
    assert classify(render(Scene("circle", "red", "blue", 0.5, 0.5, 0.6), 32)).shape == "circle"


def test_every_answer_template_parses_to_its_scene():
    rng = random.Random(1)
    for maker in (data.generate_example, data.describe_example):
        for _ in range(200):
            ex = maker(rng)
            scene = next(p for p in ex.user + ex.answer if isinstance(p, Scene))
            text = next(p for p in ex.answer if isinstance(p, str))
            assert parse_caption(text) == (scene.shape, scene.colour, scene.background), text
    assert parse_caption("I am a small demo model.") is None


def test_prompts_name_what_they_ask_for():
    rng = random.Random(2)
    for _ in range(200):
        ex = data.generate_example(rng, with_background=True)
        scene = ex.answer[-1]
        prompt = ex.user[0].lower()
        assert scene.colour in prompt and scene.shape in prompt and scene.background in prompt
        inter = data.interleave_example(rng)
        assert [type(p) for p in inter.answer] == [str, Scene, str, Scene]


@pytest.fixture(scope="module")
def tokenizers():
    torch.manual_seed(0)
    vq = VQConfig(resolution=16, base_channels=32, channel_multiplier=(1, 1), num_res_blocks=1, latent_channels=32,
                  num_embeddings=64, embed_dim=16)
    text = TextTokenizer(build_tokenizer(data.corpus_texts(0, n=300), 600, 64))
    return text, ImageTokenizer(VQModel(vq).eval(), text.image_vocab)


def test_training_tokens_are_what_the_prompt_builder_makes(tokenizers):
    text, image = tokenizers
    rng = random.Random(3)
    examples = [data.describe_example(rng), data.interleave_example(rng), data.chat_example(rng)]
    images = data.SceneImages(image)
    images.add([p for ex in examples for p in ex.user + ex.answer if isinstance(p, Scene)])
    for ex in examples:
        ids, prompt_len = data.encode_example(ex, text, images)
        # the same chat through the real ImageTokenizer (one VQGAN call per image), answer as the model's turn
        user = [render(p, 16) if isinstance(p, Scene) else p for p in ex.user]
        answer = [render(p, 16) if isinstance(p, Scene) else p for p in ex.answer]
        full = build_chat_prompt([ChatMessage("user", user), ChatMessage("assistant", answer)], text, image)
        assert ids == full + [text.special.eot]
        assert ids[:prompt_len] == build_chat_prompt([ChatMessage("user", user)], text, image)
        assert ids[prompt_len - 1] == text.special.eot and ids[0] == text.special.bos


def test_collate_puts_the_loss_on_the_answer_only():
    seqs = [(torch.tensor([1, 2, 3, 4, 5]), 3), (torch.tensor([1, 6, 7]), 2)]
    inputs, targets = collate(seqs, [0, 1], pad_id=0)
    assert inputs.tolist() == [[1, 2, 3, 4], [1, 6, 0, 0]]
    assert targets.tolist() == [[-100, -100, 4, 5], [-100, 7, -100, -100]]
