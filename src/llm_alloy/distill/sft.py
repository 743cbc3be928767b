"""Supervised fine-tuning of a target on (question -> answer) pairs, loss on the answer tokens only.

TRL's SFTTrainer with peft (LoRA by default, full fine-tuning optional). Each call trains one round
and leaves two folders: the adapter (LoRA) and a merged, plain transformers model that the next round
generates with and trains from. Runs under `accelerate launch` on several GPUs like any TRL script.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_alloy.models.local import plain_prompt
from llm_alloy.models.registry import resolve_model_path


class FineTuneSettings(BaseModel):
    """What every training of the target shares (SFT rounds, logit distillation): the same names in
    every config, with the same defaults."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["lora", "full"] = "lora"
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    bf16: bool = False
    gradient_checkpointing: bool = False


class SFTSettings(FineTuneSettings):
    """One round of supervised fine-tuning."""

    max_length: int = Field(512, ge=16)


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
    result = SFTResult(model_dir=out_dir / "model", adapter_dir=None, steps=trainer.state.global_step, losses=losses)
    if not trainer.accelerator.is_main_process:
        return result

    trained = trainer.accelerator.unwrap_model(trainer.model)
    if peft_config is not None:
        result.adapter_dir = out_dir / "adapter"
        trained.save_pretrained(result.adapter_dir)
        trained = trained.merge_and_unload()
    trained.save_pretrained(result.model_dir)
    tokenizer.save_pretrained(result.model_dir)
    (out_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    (out_dir / "result.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}))
    shutil.rmtree(work, ignore_errors=True)
    return result


def train_sft_launched(
    model_path: str,
    pairs: list[tuple[str, str]],
    out_dir: Path,
    settings: SFTSettings,
    num_processes: int,
    seed: int = 0,
    device: str = "cpu",
) -> SFTResult:
    """The same round under `accelerate launch` (data-parallel over `num_processes` GPUs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = out_dir / "job.json"
    job.write_text(json.dumps({
        "model_path": model_path, "pairs": pairs, "settings": settings.model_dump(include=set(SFTSettings.model_fields)),
        "seed": seed, "device": device,
    }))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if device == "cpu":
        command.append("--cpu")
    command += ["-m", "llm_alloy.distill.sft", str(job), str(out_dir)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        # The launcher's own traceback ends in CalledProcessError; the round's error is the one before.
        errors = [line for line in completed.stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        cause = next((e for e in reversed(errors) if "CalledProcessError" not in e), errors[-1] if errors else "no output")
        raise RuntimeError(f"accelerate launch failed (exit code {completed.returncode}): {cause}")
    data = json.loads((out_dir / "result.json").read_text())
    return SFTResult(
        model_dir=Path(data["model_dir"]),
        adapter_dir=Path(data["adapter_dir"]) if data["adapter_dir"] else None,
        steps=data["steps"],
        losses=data["losses"],
    )


def main() -> None:
    """Entry point of one launched round: python -m llm_alloy.distill.sft JOB.json OUT_DIR."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("job", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    job = json.loads(args.job.read_text())
    pairs = [(question, answer) for question, answer in job["pairs"]]
    train_sft(job["model_path"], pairs, args.out_dir, SFTSettings(**job["settings"]), job["seed"], job["device"])


if __name__ == "__main__":
    main()
