"""The demo model's conversations: many English phrasings over the shapes world, and their tokens.

An `Example` is one user turn and the assistant's answer, each a list of parts (text or `Scene`).
Kinds: "generate" (text -> sentence + image), "describe" (image + question -> caption),
"interleave" (two shapes -> sentence, image, sentence, image) and "chat" (plain text).

Token sequences are exactly what the serving code sees: the prompt is `build_chat_prompt` of the
user message (<s> + content + end-of-turn), the answer is its content encoded the same way plus the
end-of-turn token; the loss covers the answer only.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from PIL import Image

from chameleon_serve.tokenizers.image import ImageTokenizer
from chameleon_serve.tokenizers.prompt import ChatMessage, build_chat_prompt, encode_content
from chameleon_serve.tokenizers.text import TextTokenizer

from .world import COLOURS, SHAPES, Scene, random_scene, render

Part = str | Scene

# ---- phrasings --------------------------------------------------------------------------------------------
# {c} shape colour, {s} shape, {b} background colour.
GENERATE_WITH_BG = [
    "draw a {c} {s} on a {b} background", "draw a {c} {s} on {b}", "show me a {c} {s} on a {b} background",
    "show me a {c} {s} on {b}", "an image of a {c} {s}, {b} background please",
    "can you draw a {c} {s} on a {b} background", "please make a picture of a {c} {s} on {b}",
    "generate an image of a {c} {s} on a {b} background", "i want a {c} {s} on a {b} background",
    "paint a {c} {s} against a {b} background", "create a {c} {s} with a {b} background",
    "a {c} {s} on {b}, please", "give me a picture: {c} {s}, {b} background",
    "render a {c} {s} over a {b} background", "could you show a {c} {s} on a {b} background",
    "make me an image of a {c} {s} on a {b} backdrop", "draw a {s} in {c} on a {b} background",
    "i would like a {s} coloured {c} on a {b} background", "picture of a {c} {s} on {b}",
    "{c} {s} on {b}", "draw me a {c} {s}. the background should be {b}",
    "a {b} background with a {c} {s} on it", "on a {b} background, draw a {c} {s}",
]
GENERATE_NO_BG = [
    "draw a {c} {s}", "show me a {c} {s}", "an image of a {c} {s} please", "can you draw a {c} {s}",
    "please make a picture of a {c} {s}", "generate a {c} {s}", "i want a {c} {s}", "paint a {c} {s}",
    "draw a {s} in {c}", "make me a {c} {s}", "a {c} {s}, please", "picture of a {c} {s}",
]
# The answer states the shape's size and place before drawing it. The image then follows the text, so the
# choice of where to draw is made once, by sampling a few words, instead of being smeared over dozens of
# image tokens where a low temperature would suppress "start the shape here" at every cell.
GENERATE_ANSWERS = ["Here is a {z} {c} {s} on a {b} background, {w}.",
                    "Sure! Here is a {z} {c} {s} on a {b} background, {w}."]

# Questions about an image, grouped by what they ask; every answer names the shape and both colours.
QUESTIONS = {
    "describe": [
        "what is in this image", "describe the picture", "what do you see", "describe this image",
        "tell me what this picture shows", "what's in the picture", "can you describe this",
        "caption this image", "what is this", "describe it", "what does the image show",
    ],
    "colour": [
        "what colour is the shape", "what color is the shape", "which colour is it", "what colour is it",
        "what color is the object", "tell me the colour of the shape",
    ],
    "shape": [
        "what shape is it", "what shape is in the image", "which shape do you see",
        "is it a circle, a square or a triangle", "what kind of shape is this", "name the shape",
    ],
    "background": ["what colour is the background", "what color is the background", "which background colour is it"],
}
ANSWERS = {
    "describe": "A {c} {s} on a {b} background.",
    "colour": "It is {c}: a {c} {s} on a {b} background.",
    "shape": "It is a {s}: a {c} {s} on a {b} background.",
    "background": "The background is {b}: a {c} {s} on a {b} background.",
}

INTERLEAVE = [
    "draw a {c1} {s1} and then a {c2} {s2}", "draw a {c1} {s1}, then a {c2} {s2}",
    "first a {c1} {s1}, then a {c2} {s2}", "show me a {c1} {s1} followed by a {c2} {s2}",
    "make two pictures: a {c1} {s1} and a {c2} {s2}", "draw a {c1} {s1} and a {c2} {s2}",
    "draw a {c1} {s1} on {b1} and then a {c2} {s2} on {b2}",
    "show a {c1} {s1} on a {b1} background, then a {c2} {s2} on a {b2} background",
    "two images please: a {c1} {s1} and then a {c2} {s2}",
]
INTERLEAVE_ANSWERS = ("Here is a {z} {c} {s} on a {b} background, {w}.",
                      "And here is a {z} {c} {s} on a {b} background, {w}.")

CAPABILITIES = ("I am a small demo model. I can draw circles, squares and triangles in red, green, blue, yellow, "
                "purple, orange, white and black, and I can describe pictures of them.")
CHAT = [
    (["hello", "hi", "hi there", "hey", "good morning", "hello there", "greetings", "good evening"],
     "Hello! I draw coloured shapes and describe pictures of them. Try: draw a red circle on a blue background."),
    (["what can you do", "help", "who are you", "what are you", "how can you help me", "what do you do"],
     CAPABILITIES),
    (["thanks", "thank you", "thank you very much", "great, thanks", "nice"], "You're welcome!"),
    (["bye", "goodbye", "see you", "bye bye"], "Goodbye!"),
    (["what colours do you know", "which colors can you use", "list your colours"],
     "Red, green, blue, yellow, purple, orange, white and black."),
    (["what shapes can you draw", "which shapes do you know", "list your shapes"],
     "Circles, squares and triangles."),
    (["how are you", "how are you doing", "are you ok"], "I am fine, thank you! Shall I draw a shape for you?"),
]


def style(rng: random.Random, text: str, question: bool = False) -> str:
    """Random casing and final punctuation, as people type."""
    r = rng.random()
    text = text.upper() if r < 0.08 else text[0].upper() + text[1:] if r < 0.55 else text
    ends = ["?", "", "", " ?"] if question else [".", "", "!", ""]
    return text + rng.choice(ends)


@dataclass
class Example:
    kind: str
    user: list[Part]
    answer: list[Part]


def articles(text: str) -> str:
    """'a orange square' -> 'an orange square' (the only colour or size word that starts with a vowel)."""
    return re.sub(r"\b([Aa]) (orange)\b", r"\1n \2", text)


def fill(template: str, scene: Scene) -> str:
    return articles(template.format(c=scene.colour, s=scene.shape, b=scene.background, z=scene.size_word, w=scene.where))


def generate_example(rng: random.Random, scene: Scene | None = None, with_background: bool | None = None) -> Example:
    scene = scene or random_scene(rng)
    if with_background is None:
        with_background = rng.random() < 0.75
    prompt = fill(rng.choice(GENERATE_WITH_BG if with_background else GENERATE_NO_BG), scene)
    if rng.random() < 0.2:  # sometimes the user says where (the scene is random, so it says where it is)
        prompt += " " + scene.where
    answer = fill(rng.choice(GENERATE_ANSWERS), scene)
    return Example("generate", [style(rng, prompt)], [answer, scene])


def describe_example(rng: random.Random, scene: Scene | None = None, topic: str | None = None) -> Example:
    scene = scene or random_scene(rng)
    topic = topic or rng.choice(list(QUESTIONS))
    question = style(rng, rng.choice(QUESTIONS[topic]), question=True)
    user = [scene, question] if rng.random() < 0.7 else [question, scene]  # image first, or question first
    return Example("describe", user, [fill(ANSWERS[topic], scene)])


def interleave_example(rng: random.Random, scenes: tuple[Scene, Scene] | None = None) -> Example:
    first, second = scenes or (random_scene(rng), random_scene(rng))
    template = rng.choice(INTERLEAVE)
    prompt = articles(template.format(c1=first.colour, s1=first.shape, b1=first.background,
                                      c2=second.colour, s2=second.shape, b2=second.background))
    answer = [fill(INTERLEAVE_ANSWERS[0], first), first, fill(INTERLEAVE_ANSWERS[1], second), second]
    return Example("interleave", [style(rng, prompt)], answer)


def chat_example(rng: random.Random) -> Example:
    prompts, reply = rng.choice(CHAT)
    return Example("chat", [style(rng, rng.choice(prompts), question=rng.random() < 0.5)], [reply])


# Shares of each kind. Reading shapes from image tokens needs many captioned images (at 0.30 of 2800 steps the
# captions named the shape right 66% of the time, at 0.45 of 3600 steps 90%), drawing them needs many drawn ones.
MIX = {"generate": 0.42, "describe": 0.38, "interleave": 0.12, "chat": 0.08}
MAKERS = {"generate": generate_example, "describe": describe_example, "interleave": interleave_example,
          "chat": chat_example}


def random_example(rng: random.Random, mix: dict[str, float] | None = None) -> Example:
    mix = mix or MIX
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    return MAKERS[kind](rng)


def corpus_texts(seed: int, n: int = 20000) -> list[str]:
    """The texts the BPE is trained on: every text part of n random examples plus the vocabulary words."""
    rng = random.Random(seed)
    texts = [" ".join(COLOURS + SHAPES)]
    for _ in range(n):
        ex = random_example(rng)
        texts += [p for p in ex.user + ex.answer if isinstance(p, str)]
    return texts


# ---- tokens -----------------------------------------------------------------------------------------------


class SceneImages:
    """Image tokens for scenes, encoded by the real ImageTokenizer in batches, handed to the prompt builder.

    Duck-types the one method `encode_content` calls (`image_to_tokens`) so the sequences come from the
    project's own prompt code, without one VQGAN call per image.
    """

    def __init__(self, image_tokenizer: ImageTokenizer, batch_size: int = 256):
        self.image_tokenizer = image_tokenizer
        self.batch_size = batch_size
        self.images: dict[Scene, Image.Image] = {}
        self.tokens: dict[int, list[int]] = {}  # id(image) -> BPE ids

    def add(self, scenes: list[Scene]) -> None:
        new = [s for s in dict.fromkeys(scenes) if s not in self.images]
        for i in range(0, len(new), self.batch_size):
            chunk = new[i : i + self.batch_size]
            images = [render(s, self.image_tokenizer.resolution) for s in chunk]
            codes = self.image_tokenizer.encode(images)
            ids = self.image_tokenizer.vocab.codes_to_tokens(codes).tolist()
            for s, im, t in zip(chunk, images, ids):
                self.images[s], self.tokens[id(im)] = im, t

    def image(self, scene: Scene) -> Image.Image:
        return self.images[scene]

    def image_to_tokens(self, image: Image.Image) -> list[int]:
        return self.tokens[id(image)]


def as_content(parts: list[Part], images: SceneImages) -> list:
    return [images.image(p) if isinstance(p, Scene) else p for p in parts]


def encode_example(ex: Example, text_tokenizer: TextTokenizer, images: SceneImages) -> tuple[list[int], int]:
    """-> (prompt + answer + end-of-turn ids, prompt length). The loss covers ids[prompt_len:]."""
    prompt = build_chat_prompt([ChatMessage("user", as_content(ex.user, images))], text_tokenizer, images)
    answer = encode_content(as_content(ex.answer, images), text_tokenizer, images) + [text_tokenizer.special.eot]
    return prompt + answer, len(prompt)


def build_dataset(
    n: int, seed: int, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer,
    mix: dict[str, float] | None = None,
) -> list[tuple[torch.Tensor, int]]:
    """n random examples as (token ids, prompt length), every image encoded once."""
    rng = random.Random(seed)
    examples = [random_example(rng, mix) for _ in range(n)]
    images = SceneImages(image_tokenizer)
    images.add([p for ex in examples for p in ex.user + ex.answer if isinstance(p, Scene)])
    out = []
    for ex in examples:
        ids, prompt_len = encode_example(ex, text_tokenizer, images)
        out.append((torch.tensor(ids, dtype=torch.long), prompt_len))
    return out
