"""Logit-level fusion end to end: real packaged models, real shards, real training steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from llm_alloy.config import ConfigError
from llm_alloy.distill.logit_run import (
    LogitDistillConfig,
    LogitRun,
    LogitRunError,
    RunState,
    demo_config_path,
    load_logit_config,
    run_logit_distill,
)
from llm_alloy.distill.logit_trainer import align_source, fill_missing_ce
from llm_alloy.distill.shards import SourceSequence, SourceShards
from llm_alloy.distill.vocab_map import VocabMap

DEMO_CORPUS = demo_config_path().with_name("corpus_demo.jsonl")
TINY_LORA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def config_data(vocab_cache: Path, documents: int = 4, steps: int = 10, extra_sources: list[dict] | None = None) -> dict:
    return {
        "target": "tiny-llama",
        "sources": [
            {"name": "smollm2", "backend": "local", "path": "smollm2-135m-instruct", "batch_size": 4},
            {"name": "tiny", "backend": "local", "path": "tiny-llama"},
            *(extra_sources or []),
        ],
        "corpus": {"path": str(DEMO_CORPUS), "limit": documents, "max_tokens": 32},
        "extraction": {"top_k": 8, "shard_size": 2},
        "fusion": {"method": "fusionx", "params": {"top_k": 1}},
        "training": {
            "method": "lora", "learning_rate": 5e-3, "max_steps": steps, "batch_size": 4, "lr_scheduler": "constant",
            "lora_target_modules": TINY_LORA, "device": "cpu",
        },
        "vocab_map_cache": str(vocab_cache),
    }


@pytest.fixture(scope="module")
def vocab_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vocab_maps")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, vocab_cache):
    out = tmp_path_factory.mktemp("logits")
    config = LogitDistillConfig.model_validate(config_data(vocab_cache))
    started = time.perf_counter()
    result = run_logit_distill(config, out, progress=False)
    return config, out, result, time.perf_counter() - started


# --- pure pieces -------------------------------------------------------------------------------------


def test_align_source_moves_rows_to_target_positions_and_renormalises_mapped_mass():
    # "Hello world": target BOS + 'Hello' + ' world'; source 'Hel' 'lo' ' world'.
    target_offsets = np.array([[0, 0], [0, 5], [5, 11]])
    sequence = SourceSequence(
        token_ids=np.array([7, 8, 9], np.int32),
        offsets=np.array([[0, 3], [3, 5], [5, 11]], np.int32),
        topk_ids=np.array([[0, 1], [2, 3], [1, 3]], np.int32),
        topk_logprobs=np.log(np.array([[0.6, 0.3], [0.5, 0.25], [0.7, 0.1]])).astype(np.float16),
        ce=2.0,
    )
    vocab_map = VocabMap(np.array([10, 11, 12, -1]), np.array([True, True, False, False]), "s", "t")
    ids, logprobs, valid = align_source(target_offsets, sequence, vocab_map)
    assert valid.tolist() == [False, True, True]
    # 'Hello' is read completely by the source after 'lo' (row 1): id 3 is unmapped, its mass dropped.
    assert ids[1].tolist() == [12, -1] and ids[2].tolist() == [11, -1]
    np.testing.assert_allclose(np.exp(logprobs[1, 0]), 1.0, rtol=1e-3)
    assert np.isneginf(logprobs[1, 1]) and (ids[0] == -1).all()


def test_missing_ce_counts_as_the_worst_source_of_the_chunk():
    np.testing.assert_array_equal(fill_missing_ce(np.array([1.0, np.nan, 3.0])), [1.0, 3.0, 3.0])
    np.testing.assert_array_equal(fill_missing_ce(np.array([np.nan, np.nan])), [0.0, 0.0])


def test_demo_config_loads_with_its_corpus_next_to_it():
    config = load_logit_config(demo_config_path())
    assert Path(config.corpus.path).exists() and [s.name for s in config.sources] == ["smollm2", "tiny"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fusion": {"method": "minc"}}, "fusion: unknown fusion method 'minc'.*did you mean 'mince'"),
        ({"fusion": {"method": "fusionx", "params": {"topk": 1}}}, "did you mean 'top_k'"),
        ({"sources": [{"name": "api", "backend": "openai", "base_url": "http://127.0.0.1:1/v1"}]}, "needs 'tokenizer'"),
        ({"sources": [{"name": "a/b", "backend": "local", "path": "tiny-llama"}]}, "folder names"),
        ({"training": {"clm_weight": 1.5}}, r"training\.clm_weight"),
        ({"corpus": {"path": "x.jsonl", "max_tokns": 3}}, r"corpus\.max_tokns: unknown field"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_field(tmp_path, change, message):
    data = {**config_data(tmp_path), **change}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as error:
        load_logit_config(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_run_directory_refuses_other_data_settings_but_retrains_on_new_training_settings(tmp_path):
    out = tmp_path / "run"
    config = LogitDistillConfig.model_validate(config_data(tmp_path))
    LogitRun(config, out, False, lambda line: None)
    RunState(done=["corpus", "sources/smollm2", "sources/tiny", "vocab_maps", "train", "report"]).save(out / "state.json")
    other_corpus = config.model_copy(update={"corpus": config.corpus.model_copy(update={"max_tokens": 64})})
    with pytest.raises(LogitRunError, match="different corpus"):
        LogitRun(other_corpus, out, False, lambda line: None)
    other_lambda = config.model_copy(update={"training": config.training.model_copy(update={"clm_weight": 0.5})})
    resumed = LogitRun(other_lambda, out, False, lambda line: None)
    assert resumed.state.done == ["corpus", "sources/smollm2", "sources/tiny", "vocab_maps"]


# --- end to end ---------------------------------------------------------------------------------------


def test_training_loss_falls_and_every_step_is_logged(finished_run):
    config, out, result, seconds = finished_run
    assert result.steps == config.training.max_steps == len(result.log)
    first = np.mean([entry["total"] for entry in result.log[:3]])
    last = np.mean([entry["total"] for entry in result.log[-3:]])
    print(f"\nloss {first:.3f} -> {last:.3f} in {result.steps} steps; whole run {seconds:.1f} s")
    assert last < first - 0.3
    for entry in result.log:
        assert set(entry) >= {"clm", "fusion", "aux", "total", "lr", "weights"}
        assert set(entry["weights"]) == {"smollm2", "tiny"}
        assert sum(entry["weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert entry["total"] == pytest.approx(0.9 * entry["clm"] + 0.1 * entry["fusion"] + entry["aux"], rel=1e-4)


def test_the_adapter_the_merged_model_and_the_selector_are_saved(finished_run):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, out, result, _ = finished_run
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 15043]])).logits).all()
    selector = load_file(out / "train" / "fusion.safetensors")
    assert selector["source_bias"].shape == (2,) and "strength" in selector


def test_the_report_shows_losses_and_source_weights(finished_run):
    _, out, result, _ = finished_run
    page = result.report.read_text()
    assert page.count("<img") == 2 and "smollm2" in page and "fusionx" in page
    assert (out / "report" / "losses.png").stat().st_size > 1000
    state = json.loads((out / "state.json").read_text())
    assert state["metrics"]["sources"]["tiny"]["exact_share"] > 0.99  # tiny-llama maps onto itself
    assert state["metrics"]["sources"]["smollm2"]["mean_ce"] < state["metrics"]["sources"]["tiny"]["mean_ce"]


def test_a_finished_run_reruns_without_recomputing_anything(finished_run):
    config, out, result, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "config.yaml"}
    lines = []
    again = run_logit_distill(config, out, progress=False, say=lines.append)
    assert all(line.endswith("skipped") for line in lines) and len(lines) == 6
    assert again.steps == result.steps
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.slow
def test_a_run_killed_during_extraction_resumes_with_the_finished_shards(tmp_path, vocab_cache):
    out = tmp_path / "run"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_data(vocab_cache, documents=8, steps=4)))
    manifest = out / "sources" / "smollm2" / "manifest.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_alloy.distill.logit_run", str(config_path), str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (manifest.exists() and json.loads(manifest.read_text())["shards"]):
            assert process.poll() is None, "the run ended before writing a shard"
            assert time.monotonic() < deadline, "no shard within the time limit"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    state = RunState.load(out / "state.json")
    assert "sources/smollm2" not in state.done and state.done == ["corpus"]
    written = json.loads(manifest.read_text())["shards"]
    stamps = {r["file"]: (out / "sources" / "smollm2" / r["file"]).stat().st_mtime_ns for r in written}

    result = run_logit_distill(load_logit_config(config_path), out, progress=False)

    shards = SourceShards(out / "sources" / "smollm2")
    assert shards.complete and len(shards.manifest["shards"]) > len(written)
    for name, stamp in stamps.items():
        assert (out / "sources" / "smollm2" / name).stat().st_mtime_ns == stamp, f"{name} was recomputed"
    assert result.steps == 4 and result.report.exists()


@pytest.mark.slow
def test_gemma_as_a_third_source(tmp_path, vocab_cache):
    from llm_alloy.models.registry import ModelNotAvailable, resolve_model_path

    try:
        resolve_model_path("gemma3-270m")
    except ModelNotAvailable as error:
        pytest.skip(str(error))
    gemma = {"name": "gemma", "backend": "local", "path": "gemma3-270m", "batch_size": 2}
    data = config_data(vocab_cache, documents=4, steps=4, extra_sources=[gemma])
    data["fusion"] = {"method": "fusionx", "params": {"top_k": 2}}
    result = run_logit_distill(LogitDistillConfig.model_validate(data), tmp_path / "run", progress=False)
    assert set(result.log[-1]["weights"]) == {"smollm2", "tiny", "gemma"}
    assert all(sum(1 for w in e["weights"].values() if w > 0) >= 2 for e in result.log)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["metrics"]["sources"]["gemma"]["mapped_share"] > 0.5


@pytest.mark.slow
def test_two_data_parallel_processes_under_accelerate_launch(tmp_path, vocab_cache):
    """The same run under `accelerate launch` with two CPU processes: the main process prepares the
    data, both train on their shard of each batch, and one model is saved."""
    config = tmp_path / "logits.yaml"
    config.write_text(yaml.safe_dump(config_data(vocab_cache, documents=2, steps=3)))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "-m", "llm_alloy.distill.logit_run", str(config), str(out), "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("trained 3 steps") == 1  # only the main process reports
    log = [json.loads(line) for line in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert (out / "train" / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "train" / "model" / "model.safetensors").exists()
