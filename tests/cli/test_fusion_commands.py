"""The FusionFactory commands from the command line: results on success, one line and exit 2 on bad input."""

from __future__ import annotations

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
