"""The engine: one thread owns the model; requests come in through a queue, results go out as events.

    submit(request) --inbox--> [engine loop: admit -> prefill chunk -> decode step -> sample] --> emitter --> handle
                                                                                                (PNG decoding)

The loop never blocks on anything but the model: image tokens are turned into PNGs on a separate
emitter thread, which also delivers every event so each request's events stay in order.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tokenizers import ImageTokenizer, IncrementalDetokenizer, TextTokenizer, build_chat_prompt, load_tokenizers
from ..tokenizers.prompt import ChatMessage, PromptError
from .events import Error, Event, Finished, ImageDone, ImageProgress, ImageStarted, TextDelta, TokenLogprob, Usage
from .model_runner import ModelRunner
from .modality import ImageLayout, Mask, ModalityMasks, ModalityState
from .params import CFGMode, GenerationRequest, InvalidRequest, OutputMode
from .sampling import RowSampling, apply_repetition_penalty, guided_logits, sample, top_logprobs
from .scheduler import Scheduler
from .sequence import RequestHandle, Sequence, Status

log = logging.getLogger("chameleon_serve.engine")


class QueueFull(RuntimeError):
    """Too many requests are waiting; try again later."""


class EngineClosed(RuntimeError):
    """The engine is shutting down or not started."""


@dataclass
class EngineConfig:
    max_sequences: int = 8  # KV-cache rows: running requests plus their CFG rows
    max_model_len: int | None = None  # positions per row; default: the model's context
    max_queue: int = 64  # requests waiting for a row before submit() raises QueueFull
    prefill_chunk: int = 512  # tokens per prefill forward (bounds how long a prefill stalls decoding)
    device: str | None = None
    dtype: str | None = None
    pad_batches: bool | None = None  # pad decode batches to fixed sizes; default: on CUDA only
    cpu_threads: int | None = None  # torch intra-op threads (process-wide); default: torch's choice.
    # On a CPU host shared with other work, 1 avoids tiny parallel ops stalling on a busy core.
    tune_weight_layouts: bool | None = None  # at start, time each weight's memory order; default: on CPU only


@dataclass
class ModelInfo:
    name: str
    can_generate_images: bool
    can_read_images: bool
    image_width: int
    image_height: int
    image_tokens: int
    max_model_len: int
    vocab_size: int


@dataclass
class EngineStats:
    running: int
    waiting: int
    tokens_forwarded: int
    steps: int


class Engine:
    def __init__(self, model, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer | None,
                 config: EngineConfig | None = None, name: str = "chameleon"):
        self.config = config = config or EngineConfig()
        self.text_tokenizer, self.image_tokenizer = text_tokenizer, image_tokenizer
        self.special = text_tokenizer.special
        cfg = model.config
        self.max_model_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.runner = ModelRunner(model, config.max_sequences, self.max_model_len, config.pad_batches)
        self.scheduler = Scheduler(config.max_sequences, self.max_model_len, config.prefill_chunk)
        self.stop_tokens = [t for t in (self.special.eos, self.special.eot) if t is not None]
        self.masks = ModalityMasks(
            cfg.vocab_size, text_tokenizer.text_token_mask, text_tokenizer.image_vocab.is_image_token,
            self.stop_tokens, self.special.boi, self.runner.device,
        )
        res = image_tokenizer.resolution if image_tokenizer else 0
        self.layout = ImageLayout.chameleon(image_tokenizer.num_tokens if image_tokenizer else 0, self.special.eoi, res, res)
        self.info = ModelInfo(
            name=name,
            can_generate_images=bool(image_tokenizer and image_tokenizer.can_decode),
            can_read_images=image_tokenizer is not None,
            image_width=res, image_height=res,
            image_tokens=self.layout.num_image_tokens,
            max_model_len=self.max_model_len,
            vocab_size=cfg.vocab_size,
        )
        self._inbox: queue.Queue = queue.Queue()
        self._by_id: dict[str, Sequence] = {}
        self._num_queued = 0  # submitted, not yet admitted (guarded by _lock)
        self._lock = threading.Lock()
        self._accepting = False
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._emitter = Emitter()
        self.steps = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, vqgan_path: str | Path | None = None,
                        config: EngineConfig | None = None, name: str | None = None) -> "Engine":
        from ..model.loading import load_checkpoint

        config = config or EngineConfig()
        dtype = getattr(torch, config.dtype) if config.dtype else None
        ckpt = load_checkpoint(path, vqgan_path=vqgan_path, dtype=dtype, device=config.device)
        text, image = load_tokenizers(ckpt.tokenizer_path, ckpt.vqgan, device=next(ckpt.model.parameters()).device)
        return cls(ckpt.model, text, image, config, name=name or ckpt.name)

    # ---- the caller's side ---------------------------------------------------------------------------------

    def start(self) -> "Engine":
        if self.config.cpu_threads:
            torch.set_num_threads(self.config.cpu_threads)
        tune = self.config.tune_weight_layouts
        if (self.runner.device.type == "cpu" if tune is None else tune) and not self.runner.weight_layouts:
            self.runner.tune_weight_layouts()  # with the thread count the loop will run with
        self._accepting = True
        self._emitter.start()
        self._loop_thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._loop_thread.start()
        return self

    @property
    def is_running(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive() and not self._stop.is_set()

    def build_chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        """Chat -> prompt ids (VQ-encodes images: CPU/GPU work, call it off the event loop)."""
        try:
            return build_chat_prompt(messages, self.text_tokenizer, self.image_tokenizer)
        except UnicodeEncodeError:
            raise InvalidRequest("the text is not valid Unicode (it holds a lone surrogate)", "messages") from None
        except (PromptError, ValueError, TypeError) as e:
            if "TextInputSequence" in str(e):  # the tokenizers library's word for text it cannot encode
                raise InvalidRequest("the text is not valid Unicode (it holds a lone surrogate)", "messages") from None
            raise InvalidRequest(str(e), "messages") from None

    def encode_text(self, text: str) -> list[int]:
        return [self.special.bos] + self.text_tokenizer.encode(text)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        self._validate(request)
        with self._lock:
            if not self._accepting:
                raise EngineClosed("the engine is not accepting requests (not started or shutting down)")
            if self._num_queued >= self.config.max_queue:
                raise QueueFull(f"{self._num_queued} requests are already waiting")
            self._num_queued += 1
        handle = RequestHandle(request.request_id, self.cancel)
        self._inbox.put(("add", request, handle))
        return handle

    def generate(self, request: GenerationRequest) -> list[Event]:
        """Sync convenience for scripts: submit and wait for all events."""
        return self.submit(request).result()

    def cancel(self, request_id: str) -> None:
        self._inbox.put(("cancel", request_id, None))

    def stats(self) -> EngineStats:
        with self._lock:
            queued = self._num_queued
        return EngineStats(self.scheduler.num_running, queued, self.runner.tokens_forwarded, self.steps)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops accepting, lets running requests finish for up to `timeout` seconds, cancels the rest."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.scheduler.num_running or self.scheduler.num_waiting or not self._inbox.empty()):
            time.sleep(0.02)
        self._inbox.put(("cancel_all", None, None))
        self._inbox.put(("stop", None, None))
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=30)
        self._emitter.stop()

    def _validate(self, request: GenerationRequest) -> None:
        request.validate()
        if max(request.prompt_tokens) >= self.info.vocab_size or min(request.prompt_tokens) < 0:
            raise InvalidRequest(f"prompt token ids must be in [0, {self.info.vocab_size})", "prompt")
        if len(request.prompt_tokens) >= self.max_model_len:
            raise InvalidRequest(
                f"the prompt is {len(request.prompt_tokens)} tokens; this model's context is {self.max_model_len}",
                "messages",
            )
        if request.output is not OutputMode.TEXT and not self.info.can_generate_images:
            raise InvalidRequest("this checkpoint has no VQ image decoder, so it can only answer with text", "modalities")
        if request.output is OutputMode.IMAGE:
            if request.image.max_images == 0:
                raise InvalidRequest("an image-only answer is one image, but image.max_images is 0", "image.max_images")
            room = min(request.max_tokens, self.max_model_len - len(request.prompt_tokens))
            if room < self.layout.block_len:
                raise InvalidRequest(
                    f"an image takes {self.layout.block_len} tokens but only {room} fit (max_tokens / context)",
                    "max_tokens",
                )
        if request.image.cfg is not CFGMode.NONE and self.scheduler.slots.num_slots < 1 + (2 if request.image.cfg is CFGMode.TEXT_IMAGE else 1):
            raise InvalidRequest("classifier-free guidance needs more cache rows than this server has", "image.cfg")

    # ---- the engine loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.scheduler.num_running or self.scheduler.num_waiting
                self._drain_inbox(block=not busy)
                for seq in self.scheduler.admit():
                    with self._lock:
                        self._num_queued -= 1
                self._step()
            except Exception as e:  # a bug must never kill the loop: fail what is running, go on
                log.exception("engine step failed")
                for seq in list(self.scheduler.running):
                    self._fail(seq, f"internal engine error: {e}")

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle_command(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle_command(self, kind: str, payload, handle) -> None:
        if kind == "add":
            try:
                seq = self._new_sequence(payload, handle)
            except Exception as e:  # never leave a caller waiting for an answer that will not come
                log.exception("could not start request %s", payload.request_id)
                with self._lock:
                    self._num_queued -= 1
                self._emitter.now(handle, Error(f"could not start the request: {e}"))
                return
            self._by_id[payload.request_id] = seq
            self.scheduler.add(seq)
        elif kind == "cancel":
            seq = self._by_id.get(payload)
            if seq is not None:
                self._finish(seq, "cancelled")
        elif kind == "cancel_all":
            for seq in list(self._by_id.values()):
                self._finish(seq, "cancelled")
        elif kind == "stop":  # queued after cancel_all, so every request has its Finished first
            self._stop.set()

    def _new_sequence(self, request: GenerationRequest, handle: RequestHandle) -> Sequence:
        generator = torch.Generator(device=self.runner.device)
        generator.manual_seed(request.seed if request.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        max_images = 1 if request.output is OutputMode.IMAGE else request.image.max_images
        seq = Sequence(
            tokens=list(request.prompt_tokens), request=request, handle=handle,
            prompt_len=len(request.prompt_tokens),
            automaton=ModalityState(request.output, self.layout, max_images),
            generator=generator,
            detokenizer=IncrementalDetokenizer(self.text_tokenizer.tokenizer),
        )
        if request.text.repetition_penalty != 1.0:
            seq.seen_text_ids = {t for t in request.prompt_tokens if self.text_tokenizer.text_token_mask[t]}
        return seq

    def _step(self) -> None:
        batch, T = self.scheduler.prefill_batch()
        if batch:
            try:
                self.runner.prefill(batch, T)
            except Exception as e:
                log.exception("prefill failed")
                for row, _ in batch:
                    self._fail(row.parent or row, f"prefill failed: {e}")
        ready = self.scheduler.decode_batch(lambda seq: seq.automaton.forced_token(self.special.boi) is not None)
        if not ready:
            return
        # guidance rows sit out steps whose next token is forced (its logits are not needed); they
        # catch up on the skipped token through the prefill path before the next guided step
        rows = [r for seq in ready for r in (seq, *self._guiding_rows(seq))]
        try:
            logits = self.runner.decode(rows)
        except Exception as e:
            log.exception("decode failed")
            for seq in ready:
                self._fail(seq, f"decode failed: {e}")
            return
        self.steps += 1
        self._choose_tokens(ready, rows, logits)

    def _choose_tokens(self, ready: list[Sequence], rows: list[Sequence], logits: torch.Tensor) -> None:
        """Per request: a forced token, or one sampled from its (guided, masked) logits."""
        row_of = {id(r): i for i, r in enumerate(rows)}
        to_sample: list[tuple[Sequence, torch.Tensor, RowSampling]] = []
        for seq in ready:
            forced = seq.automaton.forced_token(self.special.boi)
            if forced is not None:
                self._accept(seq, forced, None)
                continue
            own = logits[row_of[id(seq)]]
            if self._guiding_rows(seq):
                own = guided_logits([own] + [logits[row_of[id(g)]] for g in seq.guidance_rows], seq.request.image)
            to_sample.append((seq, own, self._row_sampling(seq)))
        if not to_sample:
            return
        seqs = [s for s, _, _ in to_sample]
        specs = [spec for _, _, spec in to_sample]
        masked = torch.stack([logit_row for _, logit_row, _ in to_sample])
        masked = masked.masked_fill(self.masks.blocked_rows([spec.mask_row for spec in specs]), float("-inf"))
        want_logprobs = [s.request.logprobs and spec.mask_row != Mask.IMAGE for s, spec in zip(seqs, specs)]
        logprobs = masked.log_softmax(dim=-1) if any(want_logprobs) else None
        scored = masked.clone() if any(s.params.repetition_penalty != 1.0 for s in specs) else masked
        apply_repetition_penalty(scored, specs)
        chosen = sample(scored, specs)
        for i, (seq, token) in enumerate(zip(seqs, chosen)):
            lp = self._logprob(logprobs[i], token, seq.request.top_logprobs) if want_logprobs[i] else None
            self._accept(seq, token, lp)

    def _guiding_rows(self, seq: Sequence) -> list[Sequence]:
        return [] if seq.automaton.forced_token(self.special.boi) is not None else seq.guidance_rows

    def _row_sampling(self, seq: Sequence) -> RowSampling:
        room = min(seq.request.max_tokens - seq.num_generated, self.max_model_len - len(seq.tokens))
        may_stop = not seq.request.ignore_eos and seq.num_generated >= seq.request.min_tokens
        mask = seq.automaton.mask(room, may_stop)
        if mask is Mask.IMAGE:
            return RowSampling(seq.request.image.sampling, seq.generator, mask)
        penalty = None
        if seq.request.text.repetition_penalty != 1.0 and seq.seen_text_ids:
            penalty = torch.tensor(sorted(seq.seen_text_ids), device=self.runner.device)
        return RowSampling(seq.request.text, seq.generator, mask, penalty)

    def _logprob(self, logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
        chosen, best = top_logprobs(logprobs, token, k)

        def entry(tid: int, value: float) -> TokenLogprob:
            raw = self.text_tokenizer.token_bytes(tid)
            return TokenLogprob(raw.decode("utf-8", errors="replace"), tid, value, list(raw))

        result = entry(token, chosen)
        result.top = [entry(t, v) for t, v in best]
        return result

    # ---- what a new token means for its request -------------------------------------------------------------

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        try:
            seq.tokens.append(token)
            for g in seq.guidance_rows:
                g.tokens.append(token)
            transition = seq.automaton.advance(token, self.special.boi)
            if transition is None:
                self._on_text_token(seq, token, logprob)
            else:
                self._on_image_token(seq, token, transition)
            if seq.status is not Status.FINISHED:
                self._check_length(seq)
        except Exception as e:
            log.exception("request %s failed", seq.request.request_id)
            self._fail(seq, f"internal error while processing a token: {e}")

    def _on_text_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        seq.text_tokens += 1
        if token in self.stop_tokens and not seq.request.ignore_eos:
            self._flush_text(seq, final=True)
            self._finish(seq, "stop", stop_reason=self.text_tokenizer.id_to_token(token))
            return
        seq.seen_text_ids.add(token)
        seq.pending_text += seq.detokenizer.push(token)
        text, stop = self._split_at_stop(seq)
        if text or logprob is not None:
            self._emit(seq, TextDelta(text, [token], [logprob] if logprob else None))
        if stop is not None:
            self._finish(seq, "stop", stop_reason=stop)

    def _split_at_stop(self, seq: Sequence) -> tuple[str, str | None]:
        """Text that is safe to emit now, and the stop string that was hit (if any)."""
        pending, stops = seq.pending_text, seq.request.stop
        for s in stops:
            at = pending.find(s)
            if at >= 0:
                seq.pending_text = ""
                return pending[:at], s
        hold = max((k for s in stops for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
        seq.pending_text = pending[len(pending) - hold:] if hold else ""
        return pending[: len(pending) - hold], None

    def _flush_text(self, seq: Sequence, final: bool) -> None:
        """Emits text held back (incomplete UTF-8, possible stop-string prefix) when text mode ends."""
        seq.pending_text += seq.detokenizer.flush()
        if seq.pending_text:
            self._emit(seq, TextDelta(seq.pending_text, []))
            seq.pending_text = ""
        if not final:
            seq.detokenizer = IncrementalDetokenizer(self.text_tokenizer.tokenizer)

    def _on_image_token(self, seq: Sequence, token: int, transition: str) -> None:
        seq.image_tokens += 1
        state, layout, image = seq.automaton, self.layout, seq.request.image
        if transition == "image_start":
            self._flush_text(seq, final=False)
            seq.image_codes = []
            self._emit(seq, ImageStarted(state.images_done, layout.width, layout.height, layout.num_image_tokens))
            self._start_guidance(seq)
        elif transition == "image_token":
            seq.image_codes.append(token)
            done, total = len(seq.image_codes), layout.num_image_tokens
            preview = image.preview_every and done % image.preview_every == 0 and done < total
            if preview:
                codes, index = list(seq.image_codes), state.images_done
                self._emitter.later(seq.handle, lambda: ImageProgress(
                    index, done, total, self.image_tokenizer.to_png(self.image_tokenizer.preview(codes))))
            elif done % max(1, total // 16) == 0 and done < total:
                self._emit(seq, ImageProgress(state.images_done, done, total))
        elif transition == "image_end":
            seq.guidance_rows = []  # their cache rows stay reserved for the next image
            codes, index = list(seq.image_codes), state.images_done - 1
            self._emitter.later(seq.handle, lambda: ImageDone(
                index, self.image_tokenizer.to_png(self.image_tokenizer.tokens_to_image(codes)), layout.width, layout.height))
            if state.finished_image_only:
                self._finish(seq, "stop")

    def _start_guidance(self, seq: Sequence) -> None:
        """Creates the CFG rows when an image begins; they prefill (cheaply) before the next decode."""
        cfg, sp = seq.request.image.cfg, self.special
        if cfg is CFGMode.NONE:
            return
        contexts = [[sp.bos, sp.boi]]  # unconditional
        if cfg is CFGMode.TEXT_IMAGE:
            contexts.insert(0, [sp.bos] + self._image_blocks(seq.tokens[:-1]) + [sp.boi])
        seq.guidance_rows = [
            Sequence(tokens=ctx, parent=seq, slot=slot, status=Status.RUNNING)
            for ctx, slot in zip(contexts, seq.reserved_slots)
        ]

    def _image_blocks(self, tokens: list[int]) -> list[int]:
        """The complete begin-image..end-of-image blocks of a context, in order (the 'image-only' context)."""
        out, start = [], None
        for i, t in enumerate(tokens):
            if t == self.special.boi:
                start = i
            elif t == self.special.eoi and start is not None:
                out += tokens[start : i + 1]
                start = None
        return out[: self.max_model_len - 2]

    def _check_length(self, seq: Sequence) -> None:
        if seq.num_generated >= seq.request.max_tokens or len(seq.tokens) >= self.max_model_len:
            self._flush_text(seq, final=True)
            self._finish(seq, "length")

    # ---- leaving -------------------------------------------------------------------------------------------

    def _usage(self, seq: Sequence) -> Usage:
        return Usage(seq.prompt_len, seq.num_generated, seq.text_tokens, seq.image_tokens)

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | None = None) -> None:
        if self._release(seq):
            self._emit(seq, Finished(reason, self._usage(seq), seq.automaton.images_done, stop_reason,
                                     seq.tokens[seq.prompt_len:]))

    def _fail(self, seq: Sequence, message: str) -> None:
        if self._release(seq):
            self._emit(seq, Error(message))

    def _release(self, seq: Sequence) -> bool:
        """Frees a request's cache rows and forgets it; False if it had already ended (one final event only)."""
        if seq.status is Status.FINISHED:
            return False
        if seq.status is Status.WAITING:
            with self._lock:
                self._num_queued -= 1
        self.scheduler.remove(seq)
        self._by_id.pop(seq.request.request_id, None)
        return True

    def _emit(self, seq: Sequence, event: Event) -> None:
        self._emitter.now(seq.handle, event)


class Emitter:
    """Delivers events in order on its own thread, computing deferred ones (PNG decodes) on the way."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-emitter", daemon=True)
        self._thread.start()

    def now(self, handle: RequestHandle, event: Event) -> None:
        self._queue.put((handle, event))

    def later(self, handle: RequestHandle, make_event) -> None:
        self._queue.put((handle, make_event))

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            handle, event = item
            if handle.done:
                continue
            if callable(event):
                try:
                    with torch.inference_mode():
                        event = event()
                except Exception as e:
                    log.exception("image decoding failed")
                    event = Error(f"image decoding failed: {e}")
                    handle.cancel()
            handle.deliver(event)
            if isinstance(event, (Finished, Error)):
                handle.done = True
