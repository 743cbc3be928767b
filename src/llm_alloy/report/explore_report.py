"""The HTML report of an `alloy explore` run: plots (embedded PNGs) and the tables behind them."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llm_alloy.explore.tree import KnowledgeTree  # noqa: E402


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def per_loop_domains(metrics: list[dict]) -> dict[int, dict[str, dict[str, int]]]:
    """Questions and target losses per loop and main domain, summed over the loop's steps."""
    loops: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"n": 0, "losses": 0}))
    for entry in metrics:
        for domain, counts in entry.get("per_domain", {}).items():
            loops[entry["loop"]][domain]["n"] += counts["n"]
            loops[entry["loop"]][domain]["losses"] += counts["losses"]
    return loops


def imbalance(accuracies: list[float]) -> tuple[float, float]:
    """Standard deviation and max - min of per-domain scores (the paper's imbalance measures)."""
    if not accuracies:
        return float("nan"), float("nan")
    values = np.array(accuracies)
    return float(values.std()), float(values.max() - values.min())


def depth_first(node) -> list:
    """Every node below `node`, each followed by its subtree, children by descending question count."""
    order = []
    for child in sorted(node.children.values(), key=lambda c: -c.count):
        order += [child, *depth_first(child)]
    return order


def tree_plot(tree: KnowledgeTree) -> str:
    nodes = depth_first(tree.root)
    if not nodes:
        return "<p>The tree has no domain yet.</p>"
    total = sum(child.count for child in tree.root.children.values()) or 1
    labels = [n.name + " ·" * (len(n.path) - 1) for n in nodes]
    shares = [n.count / total for n in nodes]
    loss = [n.alpha / (n.alpha + n.beta) for n in nodes]
    figure, axis = plt.subplots(figsize=(8, 0.3 * len(nodes) + 1))
    bars = axis.barh(range(len(nodes)), shares, color=plt.cm.RdYlGn_r(np.array(loss)))
    axis.set_yticks(range(len(nodes)), labels, fontsize=8)
    for tick, node in zip(axis.get_yticklabels(), nodes):
        tick.set_fontweight("bold" if len(node.path) == 1 else "normal")
    axis.invert_yaxis()
    axis.set_xlabel("share of all questions; main domains in bold, '·' per level below (colour: posterior mean of the target's loss rate, green low, red high)")
    for bar, node in zip(bars, nodes):
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {node.count}", va="center", fontsize=7)
    axis.set_title("knowledge tree: allocation shares")
    return _png(figure)


def allocation_plot(loops: dict[int, dict[str, dict[str, int]]], domains: list[str]) -> str:
    figure, axis = plt.subplots(figsize=(8, 4))
    order = sorted(loops)
    bottom = np.zeros(len(order))
    for domain in domains:
        counts = np.array([loops[loop].get(domain, {"n": 0})["n"] for loop in order], dtype=float)
        totals = np.array([sum(d["n"] for d in loops[loop].values()) or 1 for loop in order], dtype=float)
        axis.bar([str(loop) for loop in order], counts / totals, bottom=bottom, label=domain)
        bottom += counts / totals
    axis.set_xlabel("loop")
    axis.set_ylabel("share of the loop's questions")
    axis.set_title("allocation over rounds")
    axis.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _png(figure)


def accuracy_plots(loops: dict[int, dict[str, dict[str, int]]], domains: list[str]) -> tuple[str, list[tuple[int, float, float]]]:
    order = sorted(loops)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for domain in domains:
        xs, ys = [], []
        for loop in order:
            counts = loops[loop].get(domain)
            if counts and counts["n"]:
                xs.append(loop)
                ys.append(1 - counts["losses"] / counts["n"])
        left.plot(xs, ys, marker="o", label=domain)
    for axis in (left, right):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.set_xlabel("loop")
    left.set_ylabel("target win rate (1 - loss rate)")
    left.set_ylim(-0.05, 1.05)
    left.set_title("per-domain target accuracy over rounds")
    left.legend(fontsize=7)
    rows = []
    for loop in order:
        scores = [1 - c["losses"] / c["n"] for c in loops[loop].values() if c["n"]]
        rows.append((loop, *imbalance(scores)))
    right.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="std")
    right.plot([r[0] for r in rows], [r[2] for r in rows], marker="s", label="max - min")
    right.set_xlabel("loop")
    right.set_title("imbalance across main domains")
    right.legend()
    return _png(figure), rows


def ledger_plot(ledger: list[dict]) -> str:
    if not ledger:
        return "<p>No model calls recorded.</p>"
    models = sorted({row["model"] for row in ledger})
    roles = sorted({row["role"] for row in ledger})
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = np.zeros(len(models))
    for role in roles:
        tokens = np.array([
            sum(r["prompt_tokens"] + r["completion_tokens"] for r in ledger if r["model"] == m and r["role"] == role)
            for m in models
        ], dtype=float)
        left.bar(models, tokens, bottom=bottom, label=role)
        bottom += tokens
    left.set_ylabel("tokens (prompt + completion)")
    left.set_title("tokens per model and role")
    left.legend(fontsize=7)
    costs = [sum(r["cost_usd"] for r in ledger if r["model"] == m) for m in models]
    right.bar(models, costs)
    right.set_ylim(bottom=0, top=max(costs) * 1.1 or 1.0)
    if not any(costs):
        right.text(0.5, 0.5, "no model has a price set", ha="center", transform=right.transAxes)
    right.set_ylabel("US dollars")
    right.set_title("cost per model")
    return _png(figure)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_explore_report(out: str | Path) -> Path:
    out = Path(out)
    state_path = out / "state.json"
    if not state_path.exists():
        raise FileNotFoundError(f"{out}: not an explore run directory (no state.json)")
    try:
        state = json.loads(state_path.read_text())
    except ValueError as error:
        raise ValueError(f"{state_path}: corrupt run state ({error})") from None
    tree = KnowledgeTree.load(out / state["tree"]) if state.get("tree") else None
    metrics = state.get("metrics", [])
    loops = per_loop_domains(metrics)
    domains = sorted({d for loop in loops.values() for d in loop})
    accuracy_html, imbalance_rows = accuracy_plots(loops, domains) if loops else ("<p>No exploration yet.</p>", [])
    ledger = state.get("ledger", [])
    stage_rows = [
        [m["stage"], m.get("kind", "rebirth"), m.get("leader", ""), m.get("questions", m.get("examples", "")),
         m.get("dropped", ""), ", ".join(" > ".join(p) for p in m.get("rebirths", []))]
        for m in metrics
    ]
    sections = [
        "<h1>llm-alloy explore report</h1>",
        f"<p>Run directory <code>{html.escape(str(out.resolve()))}</code>: {len(state.get('done', []))} stages done, "
        f"total cost ${sum(r['cost_usd'] for r in ledger):.4f}.</p>",
        "<h2>Knowledge tree</h2>", tree_plot(tree) if tree else "<p>No tree yet.</p>",
        _table(["domain", "questions", "posterior (alpha, beta)", "loss rate (mean)", "recent window", "trained on"],
               [[" > ".join(n.path), n.count, f"({n.alpha:g}, {n.beta:g})", f"{n.alpha / (n.alpha + n.beta):.2f}",
                 "".join(map(str, n.window)), n.trained] for n in depth_first(tree.root)] if tree else []),
        "<h2>Allocation over rounds</h2>", allocation_plot(loops, domains) if loops else "",
        "<h2>Per-domain target accuracy and imbalance</h2>",
        "<p>Accuracy is the target's win rate against the sources on the loop's questions (its answer chosen "
        "best by the leader, or judged correct by the domain's verifier).</p>",
        accuracy_html,
        _table(["loop", "main domain", "questions", "target lost", "target accuracy"],
               [[loop, domain, c["n"], c["losses"], f"{1 - c['losses'] / c['n']:.3f}"]
                for loop in sorted(loops) for domain, c in sorted(loops[loop].items()) if c["n"]]),
        _table(["loop", "std", "max - min"], [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}"] for r in imbalance_rows]),
        "<h2>Tokens and cost</h2>", ledger_plot(ledger),
        _table(["model", "role", "calls", "cached", "prompt tokens", "completion tokens", "cost USD"],
               [[r["model"], r["role"], r["calls"], r["cached_calls"], r["prompt_tokens"], r["completion_tokens"], f"{r['cost_usd']:.5f}"] for r in ledger]),
        "<h2>Stages</h2>", _table(["stage", "kind", "leader", "questions / examples", "dropped", "reborn"], stage_rows),
        "<h2>Parsing</h2>", _table(["parser: outcome", "count"], sorted(state.get("parse_log", {}).items())),
    ]
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>llm-alloy report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    path = out / "report.html"
    path.write_text(page)
    return path
