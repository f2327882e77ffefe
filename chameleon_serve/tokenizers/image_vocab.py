"""The map between VQ codebook indices and the BPE ids of image tokens.

Image tokens are the vocabulary entries named `IMGIMG<letters>Z`; the letters spell the codebook index in
decimal with A..J standing for 0..9 (`IMGIMGFDZ` is code 53). The map is read from the names only: the
real vocabulary happens to put codes 0..8191 at ids 4..8195, but nothing here assumes an offset or an order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..model.config import CheckpointError

IMAGE_TOKEN_PREFIX = "IMGIMG"
IMAGE_TOKEN_SUFFIX = "Z"


def parse_image_token(name: str) -> int | None:
    """'IMGIMGFDZ' -> 53; None for a name that is not an image token."""
    if not (name.startswith(IMAGE_TOKEN_PREFIX) and name.endswith(IMAGE_TOKEN_SUFFIX)):
        return None
    letters = name[len(IMAGE_TOKEN_PREFIX) : -len(IMAGE_TOKEN_SUFFIX)]
    if not letters or any(not ("A" <= c <= "J") for c in letters):
        return None
    return int("".join(str(ord(c) - ord("A")) for c in letters))


class ImageVocab:
    """code <-> BPE id maps for the image tokens of one vocabulary.

    code_to_token:  LongTensor [num_codes]   BPE id of each codebook index
    token_to_code:  LongTensor [vocab_size]  codebook index of each BPE id, -1 for non-image ids
    is_image_token: BoolTensor [vocab_size]
    """

    def __init__(self, code_to_token: torch.Tensor, vocab_size: int):
        self.code_to_token = code_to_token.long()
        self.num_codes = int(code_to_token.numel())
        self.vocab_size = vocab_size
        self.token_to_code = torch.full((vocab_size,), -1, dtype=torch.long)
        self.token_to_code[self.code_to_token] = torch.arange(self.num_codes)
        self.is_image_token = self.token_to_code >= 0

    @classmethod
    def from_vocab(
        cls,
        vocab: Mapping[str, int],
        num_codes: int | None = None,
        vocab_size: int | None = None,
        source: str = "tokenizer",
    ) -> "ImageVocab":
        """Build from a name -> id vocabulary. `num_codes`, when given, is the VQ codebook size to match.

        Raises CheckpointError (naming `source`) when the image tokens are missing, have gaps or
        duplicates, or do not match the codebook size.
        """
        vocab_size = vocab_size if vocab_size is not None else max(vocab.values(), default=-1) + 1
        ids_by_code: dict[int, list[int]] = {}
        for name, token_id in vocab.items():
            code = parse_image_token(name)
            if code is not None:
                ids_by_code.setdefault(code, []).append(token_id)
        if not ids_by_code:
            raise CheckpointError(f"{source}: no image tokens (names {IMAGE_TOKEN_PREFIX}...{IMAGE_TOKEN_SUFFIX})")
        duplicates = {code: ids for code, ids in ids_by_code.items() if len(ids) > 1}
        if duplicates:
            code, ids = next(iter(sorted(duplicates.items())))
            raise CheckpointError(f"{source}: image code {code} appears {len(ids)} times (ids {ids})")
        count = max(ids_by_code) + 1
        missing = [c for c in range(count) if c not in ids_by_code]
        if missing:
            raise CheckpointError(
                f"{source}: image codes have gaps: {len(missing)} of 0..{count - 1} missing, first {missing[:5]}"
            )
        if num_codes is not None and count != num_codes:
            raise CheckpointError(
                f"{source}: {count} image tokens, but the VQ codebook has {num_codes} entries"
            )
        code_to_token = torch.tensor([ids_by_code[c][0] for c in range(count)], dtype=torch.long)
        return cls(code_to_token, vocab_size)

    def codes_to_tokens(self, codes: Sequence[int] | torch.Tensor) -> list[int] | torch.Tensor:
        """Codebook indices -> BPE ids. A tensor in gives a tensor out (same shape), a list gives a list."""
        t = torch.as_tensor(codes, dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_codes):
            raise ValueError(f"image codes must lie in [0, {self.num_codes}), got [{int(t.min())}, {int(t.max())}]")
        out = self.code_to_token.to(t.device)[t]
        return out if isinstance(codes, torch.Tensor) else out.tolist()

    def tokens_to_codes(self, token_ids: Sequence[int] | torch.Tensor) -> list[int] | torch.Tensor:
        """BPE ids -> codebook indices. Raises ValueError naming the first id that is not an image token."""
        t = torch.as_tensor(token_ids, dtype=torch.long)
        in_range = (t >= 0) & (t < self.vocab_size)
        codes = torch.full_like(t, -1)
        codes[in_range] = self.token_to_code.to(t.device)[t[in_range]]
        bad = codes < 0
        if bool(bad.any()):
            first = int(t[bad].flatten()[0])
            raise ValueError(f"token id {first} is not an image token")
        return codes if isinstance(token_ids, torch.Tensor) else codes.tolist()
