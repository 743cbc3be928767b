"""End to end: `alloy explore` with real models, a real HTTP source, real training, real files."""

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
from typer.testing import CliRunner

from llm_alloy.cli import app
from llm_alloy.explore.config import ExploreConfig
from llm_alloy.explore.run import ExploreRun, RunDirectoryError, stages
from llm_alloy.explore.tree import KnowledgeTree
from llm_alloy.models.server import serve_in_thread
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


@pytest.fixture()
def scripted():
    scripted_app, seen = create_scripted_app()
    with serve_in_thread(scripted_app) as url:
        yield url, seen


def cached_responses(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, created FROM responses").fetchall())


def read_data(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "data").glob("*.jsonl"))}


def test_two_rounds_produce_data_adapter_posteriors_and_report(scripted, tmp_path):
    url, seen = scripted
    config_path = tmp_path / "explore.yaml"
    config_path.write_text(yaml.safe_dump(fast_config(url)))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["explore", str(config_path), str(out)])
    assert result.exit_code == 0, result.output

    state = json.loads((out / "state.json").read_text())
    assert state["done"] == stages(ExploreConfig.model_validate(fast_config(url)))
    records = [json.loads(line) for f in sorted((out / "data").glob("loop*_step*.jsonl")) for line in f.read_text().splitlines()]
    assert len(records) >= 6
    assert {r["path"][0] for r in records} <= {"Mathematics", "Biology", "History"}
    assert any(r["verified"] for r in records) and any(not r["verified"] for r in records)
    assert all(set(r["answers"]) == {"student", "scripted", "tiny-src"} for r in records)

    tree = KnowledgeTree.load(out / "tree.json")
    top = list(tree.root.children.values())
    assert sum(n.count for n in top) == sum(r["reward"] is not None for r in records)
    assert all(n.alpha + n.beta == 2 + n.count for n in top) or tree.window  # rebirth may reset posteriors
    assert tree.max_depth == 2 and all(len(leaf.path) == 2 for leaf in tree.leaves())

    for loop in (0, 1):
        checkpoint = out / "checkpoints" / f"loop{loop}"
        assert (checkpoint / "adapter" / "adapter_model.safetensors").exists()
        assert (checkpoint / "model" / "model.safetensors").exists()
        assert (out / "data" / f"loop{loop}_train_hf" / "dataset_info.json").exists()
    assert state["target_path"].endswith("loop1/model")

    ledger = {(r["model"], r["role"]): r for r in json.loads((out / "ledger.json").read_text())}
    assert ledger[("scripted", "question")]["calls"] > 0 or ledger[("tiny-src", "question")]["calls"] > 0
    assert ledger[("student", "target-answer")]["completion_tokens"] > 0
    scripted_cost = sum(r["cost_usd"] for (m, _), r in ledger.items() if m == "scripted")
    assert scripted_cost > 0 and sum(r["cost_usd"] for (m, _), r in ledger.items() if m != "scripted") == 0

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") == 4
    assert "Mathematics" in report or "Biology" in report or "History" in report

    # Running the finished run again does nothing and asks no model anything.
    requests_before = sum(seen.values())
    again = CliRunner().invoke(app, ["explore", str(config_path), str(out), "--no-report"])
    assert again.exit_code == 0 and "5/5 stages already done" in again.output.replace("\n", " ") or "already done" in again.output
    assert sum(seen.values()) == requests_before


def test_kill_and_resume_loses_nothing_and_repeats_no_call(scripted, tmp_path):
    url, seen = scripted
    config_path = tmp_path / "explore.yaml"
    config_path.write_text(yaml.safe_dump(fast_config(url)))
    command = [sys.executable, "-m", "llm_alloy.cli", "explore", str(config_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    reference = tmp_path / "uninterrupted"
    subprocess.run(command + [str(reference), "--no-report"], check=True, env=env, capture_output=True)
    seen.clear()

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(command + [str(resumed), "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill it in the middle of the second exploration step, after the first has been saved.
    while time.monotonic() < deadline:
        state = resumed / "state.json"
        if state.exists() and len(json.loads(state.read_text())["done"]) >= 1 and sum(seen.values()) > 0:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_state = json.loads((resumed / "state.json").read_text())
    assert 1 <= len(killed_state["done"]) < len(stages(ExploreConfig.model_validate(fast_config(url))))

    finished_before_kill = cached_responses(resumed / "cache.sqlite")
    assert finished_before_kill

    subprocess.run(command + [str(resumed), "--no-report"], check=True, env=env, capture_output=True)
    after = cached_responses(resumed / "cache.sqlite")
    # Every call that had finished (its response stored) is answered from the cache, never asked again:
    # a repeated call would rewrite its row. Only calls in flight at the kill may be sent twice.
    assert all(after[key] == stamp for key, stamp in finished_before_kill.items())
    assert sum(count - 1 for count in seen.values()) <= 8  # at most one endpoint's concurrency in flight
    assert read_data(resumed) == read_data(reference)
    assert KnowledgeTree.load(resumed / "tree.json").to_dict() == KnowledgeTree.load(reference / "tree.json").to_dict()
    assert json.loads((resumed / "state.json").read_text())["done"] == json.loads((reference / "state.json").read_text())["done"]


def test_bad_run_directories_give_one_line_errors(scripted, tmp_path):
    url, _ = scripted
    config = ExploreConfig.model_validate(fast_config(url))
    out = tmp_path / "run"
    ExploreRun(config, out, log=lambda _: None).close()
    changed = ExploreConfig.model_validate({**fast_config(url), "loops": 3})
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
