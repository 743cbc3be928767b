from safetensors.torch import load_file

from llm_alloy.distill.sft import build_examples, train_sft, train_sft_launched
from llm_alloy.explore.config import TrainingSettings
from llm_alloy.models.registry import resolve_model_path

PAIRS = [(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(6)]


def test_examples_mask_the_prompt_out_of_the_loss():
    chat = build_examples(PAIRS[:1], has_chat_template=True, eos_token="</s>")[0]
    assert chat["prompt"][0]["role"] == "user" and chat["completion"][0]["role"] == "assistant"
    plain = build_examples(PAIRS[:1], has_chat_template=False, eos_token="</s>")[0]
    assert plain["prompt"].endswith("Assistant:") and plain["completion"].endswith("</s>")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_lora_round_saves_adapter_and_a_changed_merged_model(tmp_path):
    settings = TrainingSettings(batch_size=2, max_length=64, learning_rate=5e-2)
    result = train_sft("tiny-llama", PAIRS, tmp_path, settings, seed=1)
    assert result.steps == 3 and len(result.losses) == 3
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    base = load_file(f"{resolve_model_path('tiny-llama')}/model.safetensors")
    merged = _weights(result.model_dir)
    changed = [k for k in base if not (base[k] == merged[k]).all()]
    assert changed and all("proj" in k for k in changed)  # LoRA touched the linear layers only


def test_full_fine_tuning_changes_every_trained_weight(tmp_path):
    settings = TrainingSettings(method="full", batch_size=3, max_length=64, learning_rate=1e-3)
    result = train_sft("tiny-llama", PAIRS, tmp_path, settings)
    assert result.adapter_dir is None and result.steps == 2
    base = load_file(f"{resolve_model_path('tiny-llama')}/model.safetensors")
    merged = _weights(result.model_dir)
    assert not (base["model.embed_tokens.weight"] == merged["model.embed_tokens.weight"]).all()


def test_a_round_under_accelerate_launch(tmp_path):
    settings = TrainingSettings(batch_size=2, max_length=64, launcher="accelerate")
    result = train_sft_launched("tiny-llama", PAIRS, tmp_path, settings, num_processes=1, seed=1)
    assert result.steps == 3
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert (result.model_dir / "model.safetensors").exists()
