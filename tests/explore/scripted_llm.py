"""A scripted OpenAI-compatible server for end-to-end tests: answers Bohdi's prompts in format.

It stands in for a capable source (the packaged tiny model outputs gibberish), so fast tests can check
the whole pipeline; it counts every request body it receives, so a test can prove no call repeats.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from fastapi import FastAPI, Request

DOMAINS = {
    (): ["Mathematics", "Biology", "History"],
    ("Mathematics",): ["Algebra", "Geometry"],
    ("Biology",): ["Genetics", "Ecology"],
    ("History",): ["Ancient History", "Modern History"],
}


def _pick(options: list, body: dict) -> object:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    return options[digest[0] % len(options)]


def scripted_reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    main = re.search(r"Name a main domain", prompt)
    secondary = re.search(r"secondary domain of ([A-Za-z ]+)\.", prompt)
    if main or secondary:
        parent = () if main else (secondary.group(1),)
        return f"<domain>{_pick(DOMAINS.get(parent, ['Misc Topic']), body)}</domain>"
    question = re.search(r"strictly inside the domain (.+?)\. Style", prompt)
    if question:
        reference = " <answer>42</answer>" if "<answer>" in prompt else ""
        return f"<question>Within {question.group(1)}, what number answers this carefully posed question?</question>{reference}"
    if "Candidate answers:" in prompt:
        count = len(re.findall(r"^\[\d+\]$", prompt, flags=re.MULTILINE))
        scripted = [i + 1 for i in range(count) if f"[{i + 1}]\nScripted answer" in prompt]
        # Mostly the scripted answer, sometimes another, so rewards vary.
        return f"<best>{_pick(scripted * 3 + list(range(1, count + 1)), body)}</best>"
    return "Scripted answer: working through it step by step, the result is 42."


def create_scripted_app(name: str = "scripted") -> tuple[FastAPI, Counter]:
    app = FastAPI()
    seen: Counter = Counter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        seen[json.dumps(body, sort_keys=True)] += 1
        text = scripted_reply(body)
        return {
            "id": "scripted",
            "object": "chat.completion",
            "created": 0,
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(str(body["messages"])) // 4, "completion_tokens": len(text) // 4, "total_tokens": 0},
        }

    return app, seen
