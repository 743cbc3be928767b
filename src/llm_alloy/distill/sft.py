"""Supervised fine-tuning of a target on (question -> answer) pairs, loss on the answer tokens only.

TRL's SFTTrainer with peft (LoRA by default, full fine-tuning optional). Each call trains one round
and leaves two folders: the adapter (LoRA) and a merged, plain transformers model that the next round
generates with and trains from. Runs under `accelerate launch` on several GPUs like any TRL script.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llm_alloy.models.local import plain_prompt
from llm_alloy.models.registry import resolve_model_path


class SFTSettings(Protocol):
    method: str
    learning_rate: float
    epochs: float
    batch_size: int
    gradient_accumulation: int
    max_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    bf16: bool
    gradient_checkpointing: bool


@dataclass
class SFTResult:
    model_dir: Path
    adapter_dir: Path | None
    steps: int
    losses: list[float]


def build_examples(pairs: list[tuple[str, str]], has_chat_template: bool, eos_token: str) -> list[dict]:
    """Prompt-completion examples, so TRL masks the prompt out of the loss."""
    if has_chat_template:
        return [
            {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
            for q, a in pairs
        ]
    return [
        {"prompt": plain_prompt([{"role": "user", "content": q}]), "completion": f" {a}{eos_token}"}
        for q, a in pairs
    ]


def train_sft(
    model_path: str,
    pairs: list[tuple[str, str]],
    out_dir: Path,
    settings: SFTSettings,
    seed: int = 0,
    device: str = "cpu",
) -> SFTResult:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not pairs:
        raise ValueError("no training pairs: the training mix is empty")
    folder = resolve_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    dataset = Dataset.from_list(build_examples(pairs, bool(tokenizer.chat_template), tokenizer.eos_token))

    peft_config = None
    if settings.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    work = out_dir / "trainer"
    args = SFTConfig(
        output_dir=str(work),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        max_length=settings.max_length,
        completion_only_loss=True,
        bf16=settings.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        use_cpu=device == "cpu",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    adapter_dir = None
    trained = trainer.model
    if peft_config is not None:
        adapter_dir = out_dir / "adapter"
        trained.save_pretrained(adapter_dir)
        trained = trained.merge_and_unload()
    model_dir = out_dir / "model"
    trained.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (out_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return SFTResult(model_dir=model_dir, adapter_dir=adapter_dir, steps=trainer.state.global_step, losses=losses)
