"""Distilling fused source distributions into the target: L = lambda * CLM + (1 - lambda) * fusion.

The dataset reads each chunk's target tokenization and every source's top-k shard rows, aligns them
(character offsets, vocabulary map) into `AlignedSources` batches; the loop trains the target (LoRA
via peft, or full) and the fusion's own parameters (FusionX's selector) with one optimiser. It is a
plain torch loop on `accelerate.Accelerator`, so the same code runs on CPU, one GPU in bf16, or
several GPUs under `accelerate launch`.

Outputs in OUT_DIR: adapter/ (LoRA), model/ (merged, plain transformers), fusion.safetensors +
fusion.json (the trained selector and its running strengths), train_log.jsonl (one line per
optimiser step: clm, fusion, aux, total, lr, per-source weights, seconds since the start), result.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from llm_alloy.distill.sft import FineTuneSettings
from llm_alloy.files import write_atomic


class LogitTrainSettings(FineTuneSettings):
    """How the target is trained on the fused distributions."""

    clm_weight: float = Field(0.9, ge=0, le=1, description="lambda: weight of the CLM loss, 1 - lambda goes to fusion")
    selector_learning_rate: float = Field(1e-3, gt=0, description="learning rate of the fusion's own parameters")
    max_steps: int | None = Field(None, ge=1, description="optimiser steps; overrides epochs")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lora_target_modules: str | list[str] = Field(
        "all-linear", description="peft target_modules; 'all-linear' leaves out the output head, list it to train it too"
    )
    device: Literal["auto", "cpu"] = Field("auto", description="auto: the accelerator's device (GPU when present)")
    seed: int = 0


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class AlignedExample:
    """One chunk: target tokens and each source's aligned top-k (numpy, unpadded)."""

    input_ids: np.ndarray  # (T,) int64
    ids: np.ndarray  # (S,T,k) int64 target vocabulary ids, -1 none
    logprobs: np.ndarray  # (S,T,k) float32, renormalised over the mapped entries
    valid: np.ndarray  # (S,T) bool
    ce: np.ndarray  # (S,) float32


def align_source(target_offsets: np.ndarray, sequence: Any, vocab_map: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A source's top-k rows moved onto the target positions and the target vocabulary.

    Returns ids (m,k) int64 (-1 unmapped), logprobs (m,k) float32 renormalised over the mapped
    entries (the unmapped mass is dropped), valid (m,) bool: a source row ends where the target token
    ends and at least one of its entries maps to a target token.
    """
    from llm_alloy.distill.align import align_by_offsets

    # Only positions where both models have read exactly the same text: elsewhere the source's
    # distribution predicts a different continuation (it has read past the target token's end), and
    # those positions train on the CLM term alone.
    rows = align_by_offsets(np.asarray(target_offsets), np.asarray(sequence.offsets), exact_boundaries=True)
    ids = vocab_map.map_ids(np.asarray(sequence.topk_ids)[rows.clip(min=0)])
    ids[rows < 0] = -1
    logprobs = np.where(ids >= 0, np.asarray(sequence.topk_logprobs, dtype=np.float32)[rows.clip(min=0)], -np.inf)
    valid = (ids >= 0).any(-1)
    peak = np.where(valid, logprobs.max(-1, initial=-np.inf), 0.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # rows with nothing mapped: -inf, masked below
        normaliser = peak + np.log(np.exp(logprobs - peak).sum(-1, keepdims=True))
        logprobs = np.where(ids >= 0, logprobs - normaliser, -np.inf).astype(np.float32)
    return ids, logprobs, valid


def fill_missing_ce(ce: np.ndarray) -> np.ndarray:
    """A source that predicted nothing on a chunk (one token) has CE NaN; it counts as the worst of the
    chunk's sources, so MinCE/AvgCE never prefer it and the selector's features stay finite."""
    finite = np.isfinite(ce)
    return np.where(finite, ce, ce[finite].max() if finite.any() else 0.0).astype(np.float32)


class AlignedDataset:
    """Chunks aligned with every source, built on access (torch map-style dataset)."""

    def __init__(self, chunks: Sequence[Any], target_tokenizer: Any, shards: Sequence[Any], vocab_maps: Sequence[Any], max_tokens: int):
        if len(shards) != len(vocab_maps) or not shards:
            raise ValueError(f"need one vocabulary map per source, got {len(shards)} sources and {len(vocab_maps)} maps")
        self.chunks = list(chunks)
        self.tokenizer = target_tokenizer
        self.shards = list(shards)
        self.maps = list(vocab_maps)
        self.max_length = max_tokens + target_tokenizer.num_special_tokens_to_add()

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> AlignedExample:
        chunk = self.chunks[index]
        encoded = self.tokenizer(chunk.text, return_offsets_mapping=True, truncation=True, max_length=self.max_length)
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        parts = []
        for shard, vocab_map in zip(self.shards, self.maps):
            sequence = shard.sequence(chunk.id)
            parts.append((*align_source(offsets, sequence, vocab_map), float(sequence.ce)))
        return AlignedExample(
            input_ids=np.asarray(encoded["input_ids"], dtype=np.int64),
            ids=np.stack([p[0] for p in parts]),
            logprobs=np.stack([p[1] for p in parts]),
            valid=np.stack([p[2] for p in parts]),
            ce=fill_missing_ce(np.asarray([p[3] for p in parts], dtype=np.float32)),
        )


def collate(examples: list[AlignedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded batch: input_ids, attention_mask, next_tokens (gold next token, -100 none), and the
    sources as ids (S,B,T,k), logprobs, valid (S,B,T), ce (S,B)."""
    import torch

    B, T = len(examples), max(len(e.input_ids) for e in examples)
    S, k = examples[0].ids.shape[0], examples[0].ids.shape[2]
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    next_tokens = torch.full((B, T), -100, dtype=torch.long)
    ids = torch.full((S, B, T, k), -1, dtype=torch.long)
    logprobs = torch.full((S, B, T, k), float("-inf"))
    valid = torch.zeros((S, B, T), dtype=torch.bool)
    for b, example in enumerate(examples):
        n = len(example.input_ids)
        tokens = torch.from_numpy(example.input_ids)
        input_ids[b, :n] = tokens
        attention[b, :n] = 1
        next_tokens[b, : n - 1] = tokens[1:]
        ids[:, b, :n] = torch.from_numpy(example.ids)
        logprobs[:, b, :n] = torch.from_numpy(example.logprobs)
        valid[:, b, :n] = torch.from_numpy(example.valid)
    ce = torch.from_numpy(np.stack([e.ce for e in examples], axis=1))
    return {"input_ids": input_ids, "attention_mask": attention, "next_tokens": next_tokens,
            "ids": ids, "logprobs": logprobs, "valid": valid, "ce": ce}


# --- training -----------------------------------------------------------------------------------------


def _distill_module(target: Any, fusion: Any, clm_weight: float) -> Any:
    """Target and fusion in one module, so one `accelerator.prepare` (and one DDP wrapper) covers the
    selector's parameters too."""
    import torch
    import torch.nn.functional as F

    from llm_alloy.distill.fusion import AlignedSources, fusion_loss

    class DistillModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.target = target
            self.fusion = fusion

        def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
            logits = self.target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            next_tokens = batch["next_tokens"]
            clm = F.cross_entropy(logits.flatten(0, 1).float(), next_tokens.flatten(), ignore_index=-100)
            sources = AlignedSources(batch["ids"], batch["logprobs"], batch["valid"], batch["ce"])
            fused = self.fusion(sources, next_tokens)
            distil = fusion_loss(logits, fused, batch["attention_mask"])
            total = clm_weight * clm + (1 - clm_weight) * distil + fused.aux_loss
            return {"total": total, "clm": clm, "fusion": distil, "aux": fused.aux_loss, "weights": fused.weights.mean(0)}

    return DistillModule()


@dataclass
class LogitTrainResult:
    model_dir: Path
    adapter_dir: Path | None
    steps: int
    log: list[dict] = field(default_factory=list)

    def losses(self, key: str = "total") -> list[float]:
        return [entry[key] for entry in self.log]


def _load_target(model_path: str, settings: LogitTrainSettings) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_alloy.models.registry import resolve_model_path

    folder = resolve_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Frozen LoRA base weights can live in bf16; fully trained weights stay fp32 under bf16 autocast.
    dtype = torch.bfloat16 if settings.bf16 and settings.method == "lora" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules=settings.lora_target_modules, task_type="CAUSAL_LM",
        ))
    return model, tokenizer


def train_logit_distill(
    target_path: str,
    dataset: AlignedDataset,
    fusion: Any,
    settings: LogitTrainSettings,
    out_dir: Path,
    source_names: Sequence[str],
    progress: bool = True,
) -> LogitTrainResult:
    """Train `target_path` on `dataset` with `fusion` (a `llm_alloy.distill.fusion.Fusion`); see module doc."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    if len(dataset) == 0:
        raise ValueError("no training sequences: the corpus produced no chunks")
    out_dir = Path(out_dir)
    accelerator = Accelerator(
        mixed_precision="bf16" if settings.bf16 else "no",
        cpu=settings.device == "cpu",
        gradient_accumulation_steps=settings.gradient_accumulation,
    )
    set_seed(settings.seed)
    model, tokenizer = _load_target(target_path, settings)
    module = _distill_module(model, fusion, settings.clm_weight)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": settings.learning_rate}]
    selector = [p for p in fusion.parameters() if p.requires_grad]
    if selector:
        groups.append({"params": selector, "lr": settings.selector_learning_rate, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True,
        collate_fn=lambda examples: collate(examples, tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(settings.seed),
    )
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / settings.gradient_accumulation))
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    # A prepared scheduler steps once per process per optimiser step.
    scheduler = accelerator.prepare(get_scheduler(
        settings.lr_scheduler, optimizer,
        num_warmup_steps=settings.warmup_steps * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    ))

    log_path = out_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    log: list[dict] = []
    window: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=total_steps, desc="distill", disable=not progress or not accelerator.is_main_process)
    module.train()
    step = 0
    started = time.perf_counter()
    while step < total_steps:
        for batch in loader:
            with accelerator.accumulate(module):
                outputs = module(batch)
                accelerator.backward(outputs["total"])
                window.append({key: value.detach() for key, value in outputs.items()})
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            entry = _log_entry(accelerator, window, step, scheduler.get_last_lr()[0], source_names)
            entry["seconds"] = round(time.perf_counter() - started, 3)
            window = []
            log.append(entry)
            if accelerator.is_main_process:
                with log_path.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            bar.update(1)
            bar.set_postfix(total=f"{entry['total']:.3f}", clm=f"{entry['clm']:.3f}", fusion=f"{entry['fusion']:.3f}")
            if step >= total_steps:
                break
    bar.close()

    accelerator.wait_for_everyone()
    result = LogitTrainResult(model_dir=out_dir / "model", adapter_dir=None, steps=step, log=log)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(module)
        trained = unwrapped.target
        if settings.method == "lora":
            result.adapter_dir = out_dir / "adapter"
            # Only the LoRA weights: the base output head is not resized, so no need to copy it.
            trained.save_pretrained(result.adapter_dir, save_embedding_layers=False)
            trained = trained.merge_and_unload()
        trained.save_pretrained(result.model_dir)
        tokenizer.save_pretrained(result.model_dir)
        fusion_state = {key: value.detach().float().cpu().contiguous() for key, value in unwrapped.fusion.state_dict().items()}
        if fusion_state:
            save_file(fusion_state, str(out_dir / "fusion.safetensors"))
        write_atomic(out_dir / "fusion.json", json.dumps({
            "method": unwrapped.fusion.name, "sources": list(source_names),
            "strength": unwrapped.fusion.strength.tolist() if hasattr(unwrapped.fusion, "strength") else None,
        }, indent=1))
        summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items() if k != "log"}
        write_atomic(out_dir / "result.json", json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return result


def _log_entry(accelerator: Any, window: list[dict], step: int, lr: float, source_names: Sequence[str]) -> dict:
    """Means over the accumulation window and over processes."""
    import torch

    def mean(key: str) -> torch.Tensor:
        return accelerator.reduce(torch.stack([w[key].float() for w in window]).mean(0), reduction="mean")

    weights = mean("weights").tolist()
    entry = {"step": step, "lr": lr, **{key: float(mean(key)) for key in ("total", "clm", "fusion", "aux")}}
    entry["weights"] = dict(zip(source_names, weights))
    return entry


def load_train_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
