"""The report of an `alloy distill logits` run: loss curves and per-source fusion weights over steps.

Writes OUT/report.html (plots embedded, so the file travels alone) and the same plots as PNG files
under OUT/report/.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llm_alloy.files import write_atomic  # noqa: E402


class ReportError(ValueError):
    """A run directory without what the report needs; one line naming the file."""


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start), so early steps are not dropped."""
    data = np.asarray(values, dtype=float)
    if window <= 1 or len(data) == 0:
        return data
    cumulative = np.cumsum(np.insert(data, 0, 0.0))
    ends = np.arange(1, len(data) + 1)
    starts = np.maximum(0, ends - window)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def loss_figure(log: list[dict]):
    steps = [entry["step"] for entry in log]
    window = max(1, len(log) // 20)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("total", "clm", "fusion"):
        values = [entry[key] for entry in log]
        (line,) = left.plot(steps, values, alpha=0.3)
        left.plot(steps, smooth(values, window), color=line.get_color(), label=key)
    left.set_xlabel("optimiser step")
    left.set_ylabel("loss (nats per token)")
    left.set_title(f"losses (raw, and moving average over {window} steps)")
    left.legend()
    right.plot(steps, [entry["aux"] for entry in log], color="tab:purple")
    right.set_xlabel("optimiser step")
    right.set_title("selector feedback loss (load balancing, already scaled)")
    return figure


def weights_figure(log: list[dict]):
    steps = [entry["step"] for entry in log]
    sources = list(log[0]["weights"])
    window = max(1, len(log) // 20)
    figure, axis = plt.subplots(figsize=(11, 4))
    stacked = np.array([smooth([entry["weights"][s] for entry in log], window) for s in sources])
    axis.stackplot(steps, stacked, labels=sources, alpha=0.85)
    axis.set_ylim(0, 1)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("mean weight in the batch")
    axis.set_title(f"fusion weight per source (moving average over {window} steps)")
    axis.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return figure


def _save(figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def write_logit_report(out: str | Path) -> Path:
    """OUT/report.html from OUT/train/train_log.jsonl and OUT/state.json."""
    out = Path(out)
    log_path = out / "train" / "train_log.jsonl"
    if not log_path.exists():
        raise ReportError(f"{log_path}: no training log; has the train stage run?")
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not log:
        raise ReportError(f"{log_path}: the training log is empty")
    state_path = out / "state.json"
    metrics = json.loads(state_path.read_text()).get("metrics", {}) if state_path.exists() else {}

    plots = out / "report"
    losses = _save(loss_figure(log), plots / "losses.png")
    weights = _save(weights_figure(log), plots / "weights.png")
    edge = max(1, min(5, len(log) // 4))
    summary = [
        [key, f"{_mean([e[key] for e in log[:edge]]):.4f}", f"{_mean([e[key] for e in log[-edge:]]):.4f}"]
        for key in ("total", "clm", "fusion", "aux")
    ]
    sources = metrics.get("sources", {})
    source_rows = [
        [
            name,
            f"{info.get('mean_ce', float('nan')):.3f}",
            f"{info.get('bytes_per_token', float('nan')):.1f}",
            f"{info.get('exact_share', float('nan')):.3f}",
            f"{info.get('mapped_share', float('nan')):.3f}",
            f"{_mean([e['weights'][name] for e in log if name in e['weights']]):.3f}",
        ]
        for name, info in sources.items()
    ]
    sections = [
        "<h1>Logit-level fusion</h1>",
        f"<p>{len(log)} optimiser steps; fusion <b>{html.escape(str(metrics.get('fusion', '?')))}</b>, "
        f"target <b>{html.escape(str(metrics.get('target', '?')))}</b>, "
        f"{metrics.get('chunks', '?')} training sequences.</p>",
        f"<h2>Losses (mean of the first and last {edge} steps)</h2>",
        _table(["loss", "start", "end"], summary),
        losses,
        "<h2>Fusion weights per source</h2>",
        weights,
    ]
    if source_rows:
        sections += [
            "<h2>Sources</h2>",
            _table(["source", "mean CE on the corpus", "shard bytes / token", "vocab exact-match share",
                    "vocab mapped share", "mean fusion weight"], source_rows),
        ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>logit fusion report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>"
    )
    path = out / "report.html"
    write_atomic(path, page)
    return path
