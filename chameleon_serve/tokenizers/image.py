"""Images <-> image tokens through the VQGAN.

    PIL image --preprocess--> [3, R, R] in [-1, 1] --VQGAN encoder--> codes [g*g] --code_to_token--> BPE ids
    BPE ids --token_to_code--> codes --VQGAN decoder--> [3, R, R] --postprocess--> PIL image

Codes are always mapped to BPE ids before they reach the transformer's embedding (embedding raw codes is
a known transformers regression that produced gibberish). The VQGAN runs in float32 under
`torch.inference_mode()`; its forward holds no state, so one ImageTokenizer can serve several threads.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..model.vqgan import VQModel
from .image_vocab import ImageVocab


class ImageTokenizer:
    def __init__(self, vqgan: VQModel, vocab: ImageVocab, device: str | torch.device = "cpu"):
        if vocab.num_codes != vqgan.config.num_embeddings:
            raise ValueError(
                f"the vocabulary has {vocab.num_codes} image tokens but the VQ codebook has "
                f"{vqgan.config.num_embeddings} entries"
            )
        self.device = torch.device(device)
        self.vqgan = vqgan.to(device=self.device, dtype=torch.float32).eval()
        self.vocab = vocab
        self.resolution = vqgan.config.resolution
        self.grid_size = vqgan.config.grid_size
        self.num_tokens = self.grid_size**2

    @property
    def can_decode(self) -> bool:
        return self.vqgan.has_decoder

    # ---- pixels <-> PIL -------------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> FloatTensor [3, R, R] in [-1, 1].

        Transparent images are blended onto white (the reference does the same), then the shortest side
        is resized to R with LANCZOS and the centre R x R is cropped.
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        image = image.convert("RGB")

        # Resize only the centre square (the part the crop keeps): the same picture as resizing the shortest
        # side to R and then cropping, without ever materialising the scaled-up long side (a 1 x 20000 image
        # would otherwise become R x 20000R pixels).
        R = self.resolution
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        image = image.resize((R, R), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))

        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # [R, R, 3] in 0..255
        return (pixels / 127.5 - 1.0).permute(2, 0, 1).contiguous()

    @staticmethod
    def postprocess(pixels: torch.Tensor) -> Image.Image:
        """FloatTensor [3, H, W] (roughly [-1, 1]) -> RGB PIL image."""
        x = (pixels.detach().float().clamp(-1, 1) + 1) / 2 * 255
        array = x.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array)  # [H, W, 3] uint8 -> RGB

    @staticmethod
    def to_png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    # ---- images <-> codes <-> BPE ids ---------------------------------------------------------------------

    def encode(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """One image or a list -> codes LongTensor [B, num_tokens] (row-major over the grid), on the CPU."""
        batch = [images] if isinstance(images, Image.Image) else list(images)
        if not batch:
            raise ValueError("no images to encode")
        pixels = torch.stack([self.preprocess(im) for im in batch]).to(self.device)
        with torch.inference_mode():
            return self.vqgan.encode(pixels).cpu()

    def image_to_tokens(self, image: Image.Image) -> list[int]:
        """PIL image -> num_tokens BPE ids (no boi/eoi around them)."""
        return self.vocab.codes_to_tokens(self.encode(image)[0]).tolist()

    def decode_codes(self, codes: torch.Tensor | Sequence[int]) -> Image.Image | list[Image.Image]:
        """codes [num_tokens] -> one image; codes [B, num_tokens] -> a list of B images."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        single = codes.dim() == 1
        with torch.inference_mode():
            pixels = self.vqgan.decode(codes.view(1, -1) if single else codes).cpu()
        images = [self.postprocess(p) for p in pixels]
        return images[0] if single else images

    def tokens_to_image(self, token_ids: Sequence[int] | torch.Tensor) -> Image.Image:
        """Exactly num_tokens image-token BPE ids -> PIL image."""
        if len(token_ids) != self.num_tokens:
            raise ValueError(f"an image is {self.num_tokens} image tokens, got {len(token_ids)}")
        codes = self.vocab.tokens_to_codes(torch.as_tensor(token_ids, dtype=torch.long))
        return self.decode_codes(codes)

    def preview(self, token_ids_so_far: Sequence[int] | torch.Tensor) -> Image.Image:
        """A partial image from the first k <= num_tokens image tokens, for streaming previews.

        The missing grid cells are filled by repeating the last complete row downwards (each missing cell
        takes the code of the cell above it); missing cells of the first row take the last code received;
        with no tokens at all every cell is code 0. This keeps the preview's lower part a smooth smear of
        what is known instead of noise from arbitrary codes.
        """
        k = len(token_ids_so_far)
        if k > self.num_tokens:
            raise ValueError(f"an image is {self.num_tokens} image tokens, got {k}")
        codes = self.vocab.tokens_to_codes(torch.as_tensor(token_ids_so_far, dtype=torch.long)).tolist()
        g, last = self.grid_size, (codes[-1] if codes else 0)
        for i in range(k, self.num_tokens):
            codes.append(codes[i - g] if i >= g else last)
        return self.decode_codes(codes)
