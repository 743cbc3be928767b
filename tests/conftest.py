"""Shared fixtures: packaged models and a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on 127.0.0.1 in a thread; yields the /v1 base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_backend():
    from llm_alloy.models.local import LocalBackend

    return LocalBackend("tiny-llama", "tiny-llama", batch_size=8).load()


@pytest.fixture(scope="session")
def smollm_backend():
    from llm_alloy.models.local import LocalBackend

    return LocalBackend("smollm2", "smollm2-135m-instruct", batch_size=8).load()
