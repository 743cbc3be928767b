"""Client overhead of our OpenAI-compatible backend against raw `openai` async calls.

Starts one `alloy serve` (a subprocess, so the server does not share our GIL) on loopback, then
alternates runs of the same N requests with the same concurrency: our backend's `generate` (retry
loop, concurrency bound, shared event-loop thread) and a plain `AsyncOpenAI` + semaphore loop.
Target: ours >= 0.95 of raw requests/s.

    python benchmarks/orchestration.py [--model tiny-llama] [--requests 256] [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.request

import openai

from llm_alloy.models.openai_backend import OpenAIBackend
from llm_alloy.models.server import free_port
from llm_alloy.models.types import GenerationParams


def start_server(model: str, port: int, batch_size: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_alloy.cli", "serve", model, "--port", str(port), "--name", "bench", "--batch-size", str(batch_size)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("alloy serve did not come up")


def chats(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Request {i}: say something."}] for i in range(n)]


def run_ours(url: str, n: int, concurrency: int, params: GenerationParams) -> float:
    backend = OpenAIBackend("bench", url, "bench", max_concurrency=concurrency)
    started = time.perf_counter()
    backend.generate(chats(n), params)
    elapsed = time.perf_counter() - started
    backend.close()
    return n / elapsed


def run_raw(url: str, n: int, concurrency: int, params: GenerationParams) -> float:
    async def main() -> float:
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(chat):
            async with semaphore:
                return await client.chat.completions.create(
                    model="bench", messages=chat, max_tokens=params.max_new_tokens, temperature=0.0
                )

        started = time.perf_counter()
        await asyncio.gather(*(one(c) for c in chats(n)))
        elapsed = time.perf_counter() - started
        await client.close()
        return n / elapsed

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--server-batch", type=int, default=16)
    args = parser.parse_args()
    port = free_port()
    server = start_server(args.model, port, args.server_batch)
    url = f"http://127.0.0.1:{port}/v1"
    params = GenerationParams(max_new_tokens=args.max_tokens)
    try:
        run_raw(url, args.concurrency, args.concurrency, params)  # warm-up
        ours, raw = [], []
        for round_ in range(args.rounds):
            # Alternate which goes first so drift in the server's speed hits both alike.
            pair = [("ours", run_ours), ("raw", run_raw)]
            for name, runner in pair if round_ % 2 == 0 else pair[::-1]:
                (ours if name == "ours" else raw).append(runner(url, args.requests, args.concurrency, params))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.requests} chat requests, {args.concurrency} in flight, {args.max_tokens} new tokens, model {args.model}, {args.rounds} interleaved rounds")
    print(f"{'client':<8}{'req/s mean':>12}{'stdev':>8}   per round")
    for name, values in (("ours", ours), ("raw", raw)):
        print(f"{name:<8}{statistics.mean(values):>12.1f}{statistics.stdev(values):>8.1f}   " + " ".join(f"{v:.1f}" for v in values))
    ratio = statistics.mean(ours) / statistics.mean(raw)
    print(f"ratio ours/raw: {ratio:.3f}  (target >= 0.95: {'PASS' if ratio >= 0.95 else 'MISS'})")


if __name__ == "__main__":
    main()
