"""Shared fixtures: the packaged models, loaded once per session."""

from __future__ import annotations

import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_backend():
    from llm_alloy.models.local import LocalBackend

    return LocalBackend("tiny-llama", "tiny-llama", batch_size=8).load()


@pytest.fixture(scope="session")
def smollm_backend():
    from llm_alloy.models.local import LocalBackend

    return LocalBackend("smollm2", "smollm2-135m-instruct", batch_size=8).load()
