"""The FusionFactory commands from the command line: results on success, one line and exit 2 on bad input."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from llm_alloy.cli import app
from llm_alloy.logs.io import read_logs
from tests.logs.test_fusionbench import fusionbench_rows, write_jsonl

runner = CliRunner()


def test_import_fusionbench_writes_logs_and_embeddings(tmp_path):
    source = tmp_path / "bench.jsonl"
    write_jsonl(fusionbench_rows(), source)
    result = runner.invoke(app, ["logs", "import-fusionbench", str(source), str(tmp_path / "logs.parquet")])
    assert result.exit_code == 0, result.output
    records = read_logs(tmp_path / "logs.parquet")
    assert len(records) == 12 and len({r.query_id for r in records}) == 3
    assert (tmp_path / "logs.embeddings").is_dir()


def test_a_broken_block_is_one_line_naming_the_row(tmp_path):
    rows = fusionbench_rows()
    del rows[5]  # the second query loses one arm
    source = tmp_path / "bench.jsonl"
    write_jsonl(rows, source)
    result = runner.invoke(app, ["logs", "import-fusionbench", str(source), str(tmp_path / "logs.jsonl")])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "row" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "logs.jsonl").exists()


def test_distill_logits_runs_a_config_and_resumes(tmp_path):
    from tests.distill.test_logit_run import config_data

    config = tmp_path / "logits.yaml"
    config.write_text(yaml.safe_dump(config_data(tmp_path / "vocab", documents=2, steps=2)))
    args = ["distill", "logits", str(config), str(tmp_path / "run"), "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "trained 2 steps" in first.output and (tmp_path / "run" / "report.html").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "trained 2 steps" in again.output


def test_distill_logits_bad_config_is_one_line(tmp_path):
    config = tmp_path / "logits.yaml"
    config.write_text("target: tiny-llama\nsources: []\ncorpus: {path: nowhere.jsonl}\n")
    result = runner.invoke(app, ["distill", "logits", str(config), str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert len(result.output.strip().splitlines()) == 1


def test_route_train_then_eval_beats_the_best_single_arm(tmp_path):
    from llm_alloy.logs.embeddings import EmbeddingTable
    from llm_alloy.logs.io import write_logs
    from llm_alloy.logs.synthetic import synthetic_logs

    logs = synthetic_logs(400, n_arms=6, n_clusters=4, dim=32, seed=1)
    write_logs(logs.to_records(), tmp_path / "logs.jsonl")
    EmbeddingTable(logs.matrix.query_ids, logs.embeddings, "synthetic", "none").save(tmp_path / "emb")
    config = tmp_path / "route.yaml"
    config.write_text(yaml.safe_dump({
        "logs": str(tmp_path / "logs.jsonl"), "embeddings": str(tmp_path / "emb"), "router": "knn", "params": {"k": 10},
    }))
    trained = runner.invoke(app, ["route", "train", str(config), str(tmp_path / "router")])
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["route", "eval", str(tmp_path / "router"), str(tmp_path / "logs.jsonl"),
                                    "--embeddings", str(tmp_path / "emb"), "-o", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    rows = {row["method"].split(" (")[0]: row for row in json.loads((tmp_path / "eval.json").read_text())["rows"]}
    assert rows["router"]["reward"] > rows["best single arm"]["reward"] + 0.2
    bad = runner.invoke(app, ["route", "eval", str(tmp_path / "router"), str(tmp_path / "logs.jsonl"), "--split", "dev"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
