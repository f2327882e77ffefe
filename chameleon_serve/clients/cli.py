"""`chameleon-serve chat`: one prompt to a running server; text streams to stdout, images go to files.

    chameleon-serve chat "draw a cat and describe it" --image in.png --out pics/

Text is printed as it arrives. While an image is generated a progress counter shows on stderr (one
line rewritten in place on a terminal, a few plain lines otherwise); each finished image is written
as DIR/image-N.png (N never overwrites an existing file) and its path is printed on its own line.
`--json` prints one JSON document at the end instead. Exit codes are in `ExitCode`.

Imports only the client (httpx, pillow): never torch.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

from .client import Client
from .errors import APIConnectionError, APIError, AuthenticationError
from .events import Finished, ImageDone, ImageProgress, ImageStarted, ResponseAssembler, StreamEvent, TextDelta
from .inputs import image_to_data_url
from .protocol import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, ImageOptions
from .responses import ChatResponse, ImagePart, TextPart


class ExitCode(IntEnum):
    OK = 0
    API_ERROR = 1  # the server answered with an error (4xx other than 401, 5xx), or sent something invalid
    USAGE_ERROR = 2  # bad arguments, unreadable --image, unwritable --out
    CONNECTION_ERROR = 3  # cannot reach the server, or it timed out / cut the stream
    AUTH_ERROR = 4  # 401: missing or wrong API key
    INTERRUPTED = 130  # Ctrl-C


EPILOG = f"""\
examples:
  chameleon-serve chat "draw a cat and describe it" --out pics/
  chameleon-serve chat "what is in this picture?" --image photo.jpg --text-only
  chameleon-serve chat "a red bicycle" --image-only --seed 3 --previews 64 --json

The server is --url, else ${BASE_URL_ENV}, else {DEFAULT_BASE_URL};
the API key is --api-key, else ${API_KEY_ENV}.

exit codes:
  0  success
  1  the server returned an error (bad request, not found, too large, server error)
  2  usage error (bad arguments, unreadable --image, unwritable --out)
  3  connection error (server unreachable, timed out, or the stream was cut off)
  4  authentication error (missing or wrong API key)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `chameleon-serve chat`'s arguments on the subcommand's parser."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("prompt", nargs="?", help='the prompt; "-" or omitted reads it from stdin')
    parser.add_argument("--image", dest="images", action="append", default=[], metavar="PATH",
                        help="attach an image file to the prompt (repeatable; PNG, JPEG, WebP, GIF, ...)")
    parser.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder for generated images, written as image-N.png (default: current folder)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (parts with text and image paths, usage, finish_reason) "
                        "instead of streaming text")

    server = parser.add_argument_group("server")
    server.add_argument("--url", help=f"server base URL (default ${BASE_URL_ENV} or {DEFAULT_BASE_URL})")
    server.add_argument("--api-key", help=f"API key (default ${API_KEY_ENV})")
    server.add_argument("--model", help="model name (default: the server's model)")
    server.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="longest wait for the server to say something (default 600)")
    server.add_argument("--max-retries", type=_non_negative_int, default=2, metavar="N",
                        help="retries on connection errors, 429 and 503 before giving up (default 2)")

    output = parser.add_argument_group("what to generate")
    modality = output.add_mutually_exclusive_group()
    modality.add_argument("--text-only", dest="modalities", action="store_const", const="text",
                          help="answer with text only")
    modality.add_argument("--image-only", dest="modalities", action="store_const", const="image",
                          help="answer with exactly one image")
    modality.add_argument("--modalities", dest="modalities", choices=["text", "image", "interleaved"],
                          help="text, image or interleaved (default: the server's, interleaved when it can draw)")
    output.add_argument("--max-tokens", type=_positive_int, metavar="N", help="cap on generated tokens, images included")
    output.add_argument("--temperature", type=float, metavar="T", help="text sampling temperature (0 = greedy)")
    output.add_argument("--top-p", type=float, metavar="P", help="text nucleus sampling")
    output.add_argument("--top-k", type=_non_negative_int, metavar="K", help="text top-k sampling (0 = off)")
    output.add_argument("--repetition-penalty", type=float, metavar="R", help="text repetition penalty (1 = off)")
    output.add_argument("--seed", type=int, help="seed: the same request and seed give the same answer")
    output.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")

    image = parser.add_argument_group("images")
    image.add_argument("--image-temperature", type=float, metavar="T", help="image-token sampling temperature")
    image.add_argument("--image-top-p", type=float, metavar="P", help="image-token nucleus sampling")
    image.add_argument("--image-top-k", type=_non_negative_int, metavar="K", help="image-token top-k sampling")
    image.add_argument("--cfg", choices=["none", "plain", "text_image"], help="classifier-free guidance mode")
    image.add_argument("--guidance-scale", type=float, metavar="G", help="guidance scale for --cfg plain")
    image.add_argument("--guidance-scale-text", type=float, metavar="G", help="text guidance for --cfg text_image")
    image.add_argument("--guidance-scale-image", type=float, metavar="G", help="image guidance for --cfg text_image")
    image.add_argument("--max-images", type=_non_negative_int, metavar="N", help="at most N images in the answer")
    image.add_argument("--previews", type=_positive_int, metavar="K",
                       help="every K image tokens write the image so far to DIR/image-N.preview.png "
                       "(removed once image-N.png is written)")


def run(args: argparse.Namespace) -> int:
    """Run `chameleon-serve chat`; returns an `ExitCode`."""
    try:
        prompt = _read_prompt(args.prompt)
        encoded_images = [image_to_data_url(_readable_file(path)) for path in args.images]
        output = ImageWriter(args.out)
    except (UsageError, ValueError, OSError) as error:  # ValueError: an --image that is not an image
        return _fail(ExitCode.USAGE_ERROR, str(error))

    image_options = ImageOptions(
        temperature=args.image_temperature, top_p=args.image_top_p, top_k=args.image_top_k, cfg=args.cfg,
        guidance_scale=args.guidance_scale, guidance_scale_text=args.guidance_scale_text,
        guidance_scale_image=args.guidance_scale_image, max_images=args.max_images, preview_every=args.previews,
    )  # fmt: skip
    stderr_is_terminal = sys.stderr.isatty()
    progress = ProgressReporter(sys.stderr, interactive=stderr_is_terminal, enabled=not args.json or stderr_is_terminal)
    printer = None if args.json else TextPrinter(sys.stdout)
    client = Client(args.url, args.api_key, timeout=args.timeout, max_retries=args.max_retries)
    try:
        with client.stream(
            prompt, images=encoded_images, system=args.system, modalities=args.modalities, max_tokens=args.max_tokens,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop,
            repetition_penalty=args.repetition_penalty, image=image_options, model=args.model,
        ) as events:  # fmt: skip
            assembler = ResponseAssembler()
            for event in events:
                assembler.add(event)
                _show(event, printer, progress, output)
            assembler.id, assembler.model = events.id, events.model
        response = assembler.response()
    except AuthenticationError as error:
        progress.clear()
        return _fail(ExitCode.AUTH_ERROR, f"authentication failed: {error.message} "
                     f"(pass --api-key or set ${API_KEY_ENV})")  # fmt: skip
    except APIConnectionError as error:
        progress.clear()
        return _fail(ExitCode.CONNECTION_ERROR, error.message)
    except APIError as error:
        progress.clear()
        return _fail(ExitCode.API_ERROR, f"the server returned an error: {error}")
    except OSError as error:  # writing an image failed
        progress.clear()
        return _fail(ExitCode.USAGE_ERROR, f"cannot write to {args.out}: {error}")
    except KeyboardInterrupt:
        progress.clear()
        return _fail(ExitCode.INTERRUPTED, "interrupted")
    finally:
        client.close()

    if printer is not None:
        printer.end()
    else:
        json.dump(response_document(response, output.paths), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return ExitCode.OK


def response_document(response: ChatResponse, image_paths: dict[int, Path]) -> dict[str, Any]:
    """The `--json` output: parts in order (text, or an image's path and size), usage and finish_reason."""
    parts: list[dict[str, Any]] = []
    image_index = 0
    for part in response.parts:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            width, height = part.size
            parts.append({"type": "image", "path": str(image_paths[image_index]), "width": width, "height": height})
            image_index += 1
    return {
        "id": response.id,
        "model": response.model,
        "finish_reason": response.finish_reason,
        "text": response.text,
        "parts": parts,
        "usage": response.usage.to_dict() if response.usage else None,
    }


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _show(event: StreamEvent, printer: "TextPrinter | None", progress: "ProgressReporter", output: "ImageWriter") -> None:
    if isinstance(event, TextDelta):
        progress.clear()
        if printer:
            printer.text(event.text)
    elif isinstance(event, ImageStarted):
        if printer:
            printer.end_line()  # the progress line must not overwrite unfinished text on the terminal
        progress.started(event)
    elif isinstance(event, ImageProgress):
        progress.progress(event)
        if event.preview is not None:
            output.write_preview(event.index, event.preview)
    elif isinstance(event, ImageDone):
        path = output.write_image(event.index, event.image)
        progress.done(event.index)
        if printer:
            printer.end_line()
            printer.line(str(path))
    elif isinstance(event, Finished):
        progress.clear()


class TextPrinter:
    """Streams text to stdout, remembering whether the cursor is at the start of a line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.at_line_start = True

    def text(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        self.text(text + "\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self.text("\n")

    def end(self) -> None:
        self.end_line()


@dataclass
class ProgressReporter:
    """Image progress on stderr: one line rewritten in place on a terminal; otherwise a plain line
    when an image starts, at each quarter, and when it is done."""

    stream: TextIO
    interactive: bool
    enabled: bool = True
    _line_shown: bool = False
    _quarters_reported: dict[int, int] = field(default_factory=dict)

    def started(self, event: ImageStarted) -> None:
        if self.interactive:
            self._rewrite(f"image {event.index + 1}: 0/{event.num_tokens} tokens")
        else:
            self._quarters_reported[event.index] = 0
            self._print(f"image {event.index + 1}: started ({event.width}x{event.height}, {event.num_tokens} tokens)")

    def progress(self, event: ImageProgress) -> None:
        percent = 100 * event.tokens_done // max(event.num_tokens, 1)
        if self.interactive:
            self._rewrite(f"image {event.index + 1}: {event.tokens_done}/{event.num_tokens} tokens ({percent}%)")
            return
        quarter = min(percent // 25, 3)
        if quarter > self._quarters_reported.get(event.index, 0):
            self._quarters_reported[event.index] = quarter
            self._print(f"image {event.index + 1}: {event.tokens_done}/{event.num_tokens} tokens ({percent}%)")

    def done(self, index: int) -> None:
        if self.interactive:
            self.clear()
        else:
            self._print(f"image {index + 1}: done")

    def clear(self) -> None:
        if self.enabled and self._line_shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line_shown = False

    def _rewrite(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self._line_shown = True

    def _print(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


class ImageWriter:
    """Writes the answer's images as DIR/image-N.png, numbering after the files already there."""

    _NUMBERED = re.compile(r"image-(\d+)\.png")

    def __init__(self, out_dir: Path) -> None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--out {out_dir}: cannot create the folder ({error.strerror or error})") from error
        if not out_dir.is_dir():
            raise UsageError(f"--out {out_dir}: not a folder")
        self.out_dir = out_dir
        taken = [int(m.group(1)) for p in out_dir.iterdir() if (m := self._NUMBERED.fullmatch(p.name))]
        self.first_number = max(taken, default=-1) + 1
        self.paths: dict[int, Path] = {}  # image index in the answer -> file written

    def path_for(self, index: int) -> Path:
        return self.out_dir / f"image-{self.first_number + index}.png"

    def preview_path_for(self, index: int) -> Path:
        return self.out_dir / f"image-{self.first_number + index}.preview.png"

    def write_preview(self, index: int, preview: ImagePart) -> None:
        preview.save(self.preview_path_for(index))

    def write_image(self, index: int, image: ImagePart) -> Path:
        path = image.save(self.path_for(index))
        self.preview_path_for(index).unlink(missing_ok=True)
        self.paths[index] = path
        return path


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """The command line asks for something that cannot be done (exit code 2)."""


def _read_prompt(prompt: str | None) -> str:
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and sys.stdin.isatty():
        raise UsageError('give a prompt, e.g. chameleon-serve chat "draw a cat", or pipe one on stdin')
    text = sys.stdin.read().strip()
    if not text:
        raise UsageError("the prompt read from stdin is empty")
    return text


def _readable_file(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--image {path}: no such file")
    return file


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _fail(code: ExitCode, message: str) -> int:
    sys.stderr.write(f"chameleon-serve chat: error: {message}\n")
    sys.stderr.flush()
    return int(code)
