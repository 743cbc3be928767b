"""A transformers model in this process: batched generation with left padding, and text scoring."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from llm_alloy.models.base import Backend
from llm_alloy.models.registry import resolve_model_path
from llm_alloy.models.types import (
    Completion,
    Conversation,
    GenerationParams,
    OnResult,
    SampleIndex,
    ScoredText,
    TokenLogprob,
    Usage,
    sample_indices,
)

_ROLE_PREFIX = {"system": "System", "user": "User", "assistant": "Assistant"}


def plain_prompt(conversation: Conversation) -> str:
    """The prompt format for tokenizers without a chat template (base models)."""
    lines = [f"{_ROLE_PREFIX.get(m['role'], m['role'].title())}: {m['content']}" for m in conversation]
    return "\n\n".join(lines) + "\n\nAssistant:"


def derive_seed(*parts: Any) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class ScoredTokens:
    """Every token of a text with its character span; the first token has no logprob when nothing
    (no BOS) precedes it."""

    tokens: list[TokenLogprob | None]
    offsets: list[tuple[int, int]]


class LocalBackend(Backend):
    computes_in_process = True

    def __init__(
        self,
        name: str,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        max_input_tokens: int = 2048,
    ) -> None:
        self.name = name
        self.model_id = path
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self._model = None
        self._tokenizer = None
        # One model, many callers (the server's request threads): forward passes take turns.
        self._lock = threading.RLock()

    @property
    def identity(self) -> str:
        return f"local:{self.model_id}:{self.dtype}"

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> "LocalBackend":
        with self._lock:
            if self._model is None:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                folder = resolve_model_path(self.model_id)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                tokenizer.padding_side = "left"
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, self.dtype))
                model.to(self.device).eval()
                self._tokenizer, self._model = tokenizer, model
        return self

    @property
    def tokenizer(self):
        return self.load()._tokenizer

    @property
    def model(self):
        return self.load()._model

    def render(self, conversation: Conversation) -> str:
        tokenizer = self.tokenizer
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return plain_prompt(conversation)

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        prompts = [self.render(c) for c in conversations]
        return self.generate_text(prompts, params, sample_index, on_result)

    def generate_text(
        self,
        prompts: list[str],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        """Generate from already-formatted prompts (the completions endpoint uses this directly)."""
        indices = sample_indices(sample_index, len(prompts))
        results: list[Completion | None] = [None] * len(prompts)
        # Similar lengths batched together waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            seed = derive_seed(params.seed, tuple(indices[i] for i in chunk), tuple(prompts[i] for i in chunk))
            for i, completion in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, seed)):
                results[i] = completion
                if on_result:
                    on_result(i, completion)
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[str], params: GenerationParams, seed: int) -> list[Completion]:
        import torch

        with self._lock:
            tokenizer, model = self.tokenizer, self.model
            encoded = tokenizer(
                prompts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_input_tokens,
                add_special_tokens=not tokenizer.chat_template,
            ).to(self.device)
            sampling: dict[str, Any] = {"do_sample": params.temperature > 0}
            if params.temperature > 0:
                sampling.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.stop:
                sampling.update(stop_strings=list(params.stop), tokenizer=tokenizer)
            torch.manual_seed(seed)
            with torch.inference_mode():
                out = model.generate(
                    **encoded,
                    max_new_tokens=params.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    return_dict_in_generate=True,
                    output_logits=params.top_logprobs > 0,
                    **sampling,
                )
            prompt_len = encoded["input_ids"].shape[1]
            new_tokens = out.sequences[:, prompt_len:]
            logprobs = None  # batch x steps x vocab
            if params.top_logprobs > 0:
                logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
            completions = []
            for row in range(len(prompts)):
                completions.append(
                    self._finish(
                        new_tokens[row].tolist(),
                        int(encoded["attention_mask"][row].sum()),
                        params,
                        None if logprobs is None else logprobs[row],
                    )
                )
            return completions

    def _finish(self, token_ids: list[int], prompt_tokens: int, params: GenerationParams, step_logprobs) -> Completion:
        tokenizer = self.tokenizer
        eos_ids = _eos_ids(tokenizer, self.model)
        kept: list[int] = []
        finish = "length"
        for token_id in token_ids:
            if token_id in eos_ids:
                finish = "stop"
                break
            kept.append(token_id)
        text = tokenizer.decode(kept, skip_special_tokens=True)
        for stop in params.stop:
            cut = text.find(stop)
            if cut != -1:
                text, finish = text[:cut], "stop"
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(kept) + (finish == "stop"))
        token_logprobs = None
        if step_logprobs is not None:
            token_logprobs = [
                self._token_logprob(token_id, step_logprobs[step], params.top_logprobs)
                for step, token_id in enumerate(kept)
            ]
        return Completion(text=text, finish_reason=finish, usage=usage, logprobs=token_logprobs)

    def _token_logprob(self, token_id: int, distribution, k: int) -> TokenLogprob:
        top = distribution.topk(k) if k > 0 else None
        top_ids = [] if top is None else top.indices.tolist()
        top_values = [] if top is None else top.values.tolist()
        return TokenLogprob(
            token=self.tokenizer.decode([token_id]),
            logprob=float(distribution[token_id]),
            top=[(self.tokenizer.decode([i]), v) for i, v in zip(top_ids, top_values)],
            token_id=token_id,
            top_ids=top_ids,
        )

    # -- scoring ---------------------------------------------------------------------------------
    def score_text(self, texts: list[str], top_logprobs: int = 0) -> list[ScoredTokens]:
        """Log-probability of every token of each text under the model, with character offsets."""
        import torch

        results = []
        with self._lock:
            tokenizer, model = self.tokenizer, self.model
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                encoded = tokenizer(
                    batch,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_input_tokens,
                    return_offsets_mapping=True,
                )
                offsets = encoded.pop("offset_mapping")
                encoded = encoded.to(self.device)
                with torch.inference_mode():
                    logits = model(**encoded).logits.float()
                logprobs = logits.log_softmax(-1)
                for row in range(len(batch)):
                    mask = encoded["attention_mask"][row].bool().cpu()
                    ids = encoded["input_ids"][row].cpu()[mask].tolist()
                    spans = [tuple(span) for span in offsets[row][mask].tolist()]
                    row_logprobs = logprobs[row][mask.to(logprobs.device)]
                    tokens: list[TokenLogprob | None] = [None]
                    for position in range(1, len(ids)):
                        tokens.append(self._token_logprob(ids[position], row_logprobs[position - 1], top_logprobs))
                    # Special tokens added by the tokenizer (BOS) have an empty span and are not text.
                    keep = [i for i, span in enumerate(spans) if span[1] > span[0]]
                    results.append(ScoredTokens([tokens[i] for i in keep], [spans[i] for i in keep]))
        return results

    def score(self, prompts: list[str], continuations: list[str], top_logprobs: int = 0) -> list[ScoredText]:
        scored = self.score_text([p + c for p, c in zip(prompts, continuations)], top_logprobs)
        return [continuation_tokens(s, len(p)) for s, p in zip(scored, prompts)]


def continuation_tokens(scored: ScoredTokens, prompt_chars: int) -> ScoredText:
    """The tokens that end past the prompt; a token straddling the boundary counts as continuation."""
    tokens = [t for t, (_, end) in zip(scored.tokens, scored.offsets) if end > prompt_chars and t is not None]
    return ScoredText(tokens=tokens, usage=Usage(prompt_tokens=len(scored.tokens)))


def _eos_ids(tokenizer, model) -> set[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found
