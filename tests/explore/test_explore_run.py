"""End to end: `alloy explore` with real models, a real HTTP source, real training, real files."""

import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from typer.testing import CliRunner

from llm_alloy.cli import app
from llm_alloy.explore.config import ExploreConfig
from llm_alloy.explore.run import ExploreRun, RunDirectoryError, stages
from llm_alloy.explore.tree import KnowledgeTree
from llm_alloy.models.local import LocalBackend
from llm_alloy.models.server import create_app, serve_in_thread
from tests.explore.scripted_llm import create_scripted_app


def fast_config(url: str) -> dict:
    return {
        "models": [
            {"name": "scripted", "backend": "openai", "base_url": url, "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
            {"name": "tiny-src", "backend": "local", "path": "tiny-llama"},
            {"name": "student", "backend": "local", "path": "tiny-llama"},
        ],
        "sources": ["scripted", "tiny-src"],
        "target": "student",
        "loops": 2,
        "explore_steps": 2,
        "explore_batch": 6,
        "train_draws": 1,
        "train_batch": 4,
        "seed": 27,  # leaders: scripted, scripted, scripted, then the gibberish tiny model
        "tree": {"max_depth": 2, "window": 4, "sprout_samples": 2, "seed_domains": ["Mathematics"]},
        "rebirth": {"reference": "pre_window", "test": "two_sample", "recent": "loop"},
        "roles": {
            "sprout": {"max_new_tokens": 8, "temperature": 1.0},
            "question": {"max_new_tokens": 24, "temperature": 1.0},
            "answer": {"max_new_tokens": 16},
            "judge": {"max_new_tokens": 8, "temperature": 1.0},
            "question_samples": 2,
            "judge_samples": 2,
        },
        "training": {"batch_size": 2, "max_length": 96},
        "verifiers": {"Mathematics": {"kind": "numeric"}},
    }


def smollm_config(url: str) -> dict:
    """Real models throughout: SmolLM2 in process and SmolLM2 behind `alloy serve` as the two sources."""
    config = fast_config(url)
    config["models"][:2] = [
        {"name": "smollm2", "backend": "local", "path": "smollm2-135m-instruct"},
        {"name": "smollm2-http", "backend": "openai", "base_url": url, "model": "smollm2"},
    ]
    config.update(sources=["smollm2", "smollm2-http"], explore_steps=1, explore_batch=4, seed=0, verifiers={})
    config["tree"] = {"max_depth": 2, "window": 4, "sprout_samples": 3}
    config["roles"].update(
        question={"max_new_tokens": 64, "temperature": 0.9},
        answer={"max_new_tokens": 96},
        answer_system="Answer concisely, in at most 40 words.",
        judge={"max_new_tokens": 12, "temperature": 0.7},
    )
    return config


@pytest.fixture(params=["tiny", pytest.param("smollm", marks=pytest.mark.slow)])
def setup(request):
    """(config, request counter of the HTTP source): tiny target + scripted source (fast), or SmolLM2 sources (slow)."""
    if request.param == "tiny":
        scripted_app, seen = create_scripted_app()
        with serve_in_thread(scripted_app) as url:
            yield fast_config(url), seen
        return
    # One request per forward pass: a batching server samples each request with a seed shared by
    # whatever arrived alongside it, and the runs compared here must see identical answers.
    unbatched = LocalBackend("smollm2", "smollm2-135m-instruct", batch_size=1)
    with serve_in_thread(create_app(unbatched, served_name="smollm2")) as url:
        yield smollm_config(url), None


def cached_responses(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, created FROM responses").fetchall())


def read_data(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "data").glob("*.jsonl"))}


def test_two_rounds_produce_data_adapter_posteriors_and_report(setup, tmp_path):
    data, seen = setup
    config = ExploreConfig.model_validate(data)
    config_path = tmp_path / "explore.yaml"
    config_path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["explore", str(config_path), str(out)])
    assert result.exit_code == 0, result.output

    state = json.loads((out / "state.json").read_text())
    assert state["done"] == stages(config)
    records = [json.loads(line) for f in sorted((out / "data").glob("loop*_step*.jsonl")) for line in f.read_text().splitlines()]
    assert records, "no question survived generation and judging"
    assert all(set(r["answers"]) == {"student", *config.sources} for r in records)
    assert all(r["best_model"] in r["answers"] for r in records if r["best_model"])
    assert all(r["reward"] == int(r["best_model"] != "student") for r in records if not r["verified"])
    if seen is not None:  # the scripted source's domains, one of them verified
        assert len(records) >= 6
        assert {r["path"][0] for r in records} <= {"Mathematics", "Biology", "History"}
        assert any(r["verified"] for r in records) and any(not r["verified"] for r in records)

    tree = KnowledgeTree.load(out / "tree.json")
    assert tree.max_depth == 2 and tree.leaves() and all(len(leaf.path) == 2 for leaf in tree.leaves())
    # Every kept question updated the posterior of each node on its path.
    for main in tree.root.children.values():
        outcomes = [r["reward"] for r in records if r["path"][0] == main.name]
        assert main.count == len(outcomes)
        if not any(m.get("rebirths") for m in state["metrics"]):  # no rebirth reset this node's posterior
            assert (main.alpha, main.beta) == (1 + sum(outcomes), 1 + len(outcomes) - sum(outcomes))

    trained = [m for m in state["metrics"] if m["stage"].endswith("train") and m["examples"]]
    assert trained, "no loop had data to train on"
    for metrics in trained:
        checkpoint = out / "checkpoints" / f"loop{metrics['loop']}"
        assert (checkpoint / "adapter" / "adapter_model.safetensors").exists()
        assert (checkpoint / "model" / "model.safetensors").exists()
        assert (out / "data" / f"loop{metrics['loop']}_train_hf" / "dataset_info.json").exists()
        assert metrics["steps"] >= 1 and len(metrics["losses"]) == metrics["steps"]
    assert state["target_path"] == trained[-1]["model_dir"]
    loop0 = [r["question"] for r in records if r["loop"] == 0]
    if loop0:
        assert load_from_disk(str(out / "data" / "loop0_hf"))["question"] == loop0

    ledger = {(r["model"], r["role"]): r for r in json.loads((out / "ledger.json").read_text())}
    assert ledger[("student", "target-answer")]["completion_tokens"] > 0
    priced = {m.name for m in config.models if m.price.input_per_mtok}
    assert all((r["cost_usd"] > 0) == (model in priced and r["calls"] > 0) for (model, _), r in ledger.items())

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") == 4
    assert all(f"<td>{html.escape(' > '.join(node.path))}</td>" in report for node in tree.iter_nodes())

    # Running the finished run again does nothing and asks no model anything.
    requests_before = None if seen is None else sum(seen.values())
    again = CliRunner().invoke(app, ["explore", str(config_path), str(out), "--no-report"])
    # rich wraps long lines (the tmp path) at the terminal width: compare with whitespace collapsed
    assert again.exit_code == 0 and f"{len(stages(config))}/{len(stages(config))} stages already done" in " ".join(again.output.split())
    assert seen is None or sum(seen.values()) == requests_before


def test_kill_and_resume_loses_nothing_and_repeats_no_call(setup, tmp_path):
    data, seen = setup
    config_path = tmp_path / "explore.yaml"
    config_path.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "llm_alloy.cli", "explore", str(config_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    reference = tmp_path / "uninterrupted"
    subprocess.run(command + [str(reference), "--no-report"], check=True, env=env, capture_output=True)
    if seen is not None:
        seen.clear()

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(command + [str(resumed), "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    # Kill it inside the second stage: the first is saved, and the cache has grown since.
    while time.monotonic() < deadline:
        state_path = resumed / "state.json"
        if state_path.exists() and json.loads(state_path.read_text())["done"]:
            saved = len(cached_responses(resumed / "cache.sqlite"))
            while len(cached_responses(resumed / "cache.sqlite")) == saved and time.monotonic() < deadline:
                time.sleep(0.01)
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_state = json.loads((resumed / "state.json").read_text())
    assert 1 <= len(killed_state["done"]) < len(stages(ExploreConfig.model_validate(data)))
    finished_before_kill = cached_responses(resumed / "cache.sqlite")

    subprocess.run(command + [str(resumed), "--no-report"], check=True, env=env, capture_output=True)
    after = cached_responses(resumed / "cache.sqlite")
    # Every call that had finished (its response stored) is answered from the cache, never asked again:
    # a repeated call would rewrite its row. Only calls in flight at the kill may be sent twice.
    assert all(after[key] == stamp for key, stamp in finished_before_kill.items())
    if seen is not None:
        assert sum(count - 1 for count in seen.values()) <= 8  # at most one endpoint's concurrency in flight
    assert read_data(resumed) == read_data(reference)
    assert KnowledgeTree.load(resumed / "tree.json").to_dict() == KnowledgeTree.load(reference / "tree.json").to_dict()
    assert json.loads((resumed / "state.json").read_text())["done"] == json.loads((reference / "state.json").read_text())["done"]


def test_bad_run_directories_give_one_line_errors(scripted, tmp_path):
    data, _ = scripted
    config = ExploreConfig.model_validate(data)
    out = tmp_path / "run"
    ExploreRun(config, out, log=lambda _: None).close()
    changed = ExploreConfig.model_validate({**data, "loops": 3})
    with pytest.raises(RunDirectoryError, match="different config"):
        ExploreRun(changed, out)
    (out / "state.json").write_text("{ truncated")
    with pytest.raises(RunDirectoryError, match="state.json: corrupt run state"):
        ExploreRun(config, out)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not an explore run directory" in result.output


def test_config_errors_name_the_field(tmp_path):
    data = fast_config("http://127.0.0.1:1/v1")
    data["target"] = "scripted"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["explore", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "must be a local model" in result.output


def test_rebirth_options_are_validated(tmp_path):
    data = fast_config("http://127.0.0.1:1/v1")
    data["rebirth"] = {"test": "two_sample"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["explore", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "needs reference='pre_window'" in result.output
    data["rebirth"] = {"reference": "pre_window", "test": "two_sample", "recent": "loop"}
    assert ExploreConfig.model_validate(data).rebirth.recent == "loop"
