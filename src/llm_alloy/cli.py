"""`alloy`: the command line. Each command reads its inputs, calls the library, and reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from llm_alloy.config import ConfigError, load_config
from llm_alloy.models.registry import ModelNotAvailable
from llm_alloy.models.spec import ModelSpec, ModelsSection
from llm_alloy.models.types import ModelError

app = typer.Typer(
    help="llm-alloy: fuse the knowledge of several heterogeneous LLMs into one target LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="The small models that ship inside PyPI packages.", no_args_is_help=True)
app.add_typer(models_app, name="models")
logs_app = typer.Typer(help="FusionFactory log data: collect responses of several models, import LLMFusionBench.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
route_app = typer.Typer(help="FusionFactory query-level fusion: routers that pick a model per query.", no_args_is_help=True)
app.add_typer(route_app, name="route")
templates_app = typer.Typer(help="FusionFactory thought-level fusion: reasoning templates retrieved at inference.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
distill_app = typer.Typer(help="Distil the sources' knowledge into the target (top responses or fused logits).", no_args_is_help=True)
app.add_typer(distill_app, name="distill")
console = Console(stderr=True)

# Errors a user can fix: reported as one line, no traceback.
USER_ERRORS = (ConfigError, ModelError, ModelNotAvailable, FileNotFoundError, ValueError)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def model_from(model: str, config: Optional[Path]) -> ModelSpec:
    """A model declared in a config, or (without one) a packaged name, local folder or hub id."""
    if config is None:
        return ModelSpec(name=model, backend="local", path=model)
    return load_config(config, ModelsSection).model(model)


@models_app.command("list")
def models_list() -> None:
    """Show the packaged models, whether their package is installed and whether they are converted."""
    from llm_alloy.models.registry import PACKAGED_MODELS, converted_dir

    table = Table(title="packaged models")
    for column in ("name", "package", "installed", "converted", "about"):
        table.add_column(column)
    for packaged in PACKAGED_MODELS.values():
        converted = (converted_dir(packaged.name) / "config.json").exists() if packaged.kind == "causal-lm" else None
        table.add_row(
            packaged.name,
            packaged.package,
            "yes" if packaged.is_installed() else escape(f"no: {packaged.pip}"),
            {True: "yes", False: "no", None: "-"}[converted],
            packaged.description,
        )
    Console().print(table)


@models_app.command("prepare")
def models_prepare(names: list[str] = typer.Argument(..., help="packaged model names")) -> None:
    """Convert packaged GGUF models to safetensors once, so later loads take under a second."""
    from llm_alloy.models.registry import resolve_model_path

    try:
        for name in names:
            with console.status(f"preparing {name}"):
                console.print(f"{name}: {resolve_model_path(name)}")
    except Exception as error:  # the registry names the missing package or the bad file
        fail(error)


@app.command()
def generate(
    model: str = typer.Option(..., "--model", "-m", help="a model declared in --config, or a packaged name / folder / hub id"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="one user message"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="JSONL, one {'prompt': ...} or {'messages': [...]} a line"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL of completions (default: print)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with a models: list"),
    max_new_tokens: Optional[int] = typer.Option(None, help="overrides the model's default"),
    temperature: Optional[float] = typer.Option(None, help="overrides the model's default; 0 = greedy"),
    samples: int = typer.Option(1, min=1, help="completions per prompt (sample indices 0..N-1)"),
    cache: Optional[Path] = typer.Option(None, help="sqlite response cache; reruns repeat no call"),
    batch: int = typer.Option(32, min=1, help="conversations per call (progress granularity)"),
) -> None:
    """Generate completions for one prompt or a JSONL file of prompts."""
    from llm_alloy.models.cache import ResponseCache
    from llm_alloy.models.factory import build_backend

    try:
        spec = model_from(model, config)
        conversations = read_conversations(prompt, input)
        params = spec.generation.merged(max_new_tokens=max_new_tokens, temperature=temperature)
        backend = build_backend(spec, ResponseCache(cache) if cache else None)
        out = output.open("w") if output else sys.stdout
        with progress_bar() as progress:
            task = progress.add_task(f"{spec.name}", total=len(conversations) * samples)
            for sample_index in range(samples):
                for start in range(0, len(conversations), batch):
                    chunk = conversations[start : start + batch]
                    completions = backend.generate(
                        chunk, params, sample_index, on_result=lambda *_: progress.advance(task)
                    )
                    for offset, completion in enumerate(completions):
                        record = {"index": start + offset, "sample": sample_index, **completion.to_dict()}
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
        if output:
            out.close()
            console.print(f"wrote {len(conversations) * samples} completions to {output}")
    except USER_ERRORS as error:
        fail(error)


def read_conversations(prompt: Optional[str], input: Optional[Path]) -> list[list[dict[str, str]]]:
    if (prompt is None) == (input is None):
        raise ValueError("give exactly one of --prompt or --input")
    if prompt is not None:
        return [[{"role": "user", "content": prompt}]]
    conversations = []
    for number, line in enumerate(input.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            conversations.append(record["messages"] if "messages" in record else [{"role": "user", "content": record["prompt"]}])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{input}:{number}: expected a JSON object with 'prompt' or 'messages'") from None
    return conversations


@app.command()
def serve(
    model: str = typer.Argument(..., help="packaged name (e.g. smollm2-135m-instruct), local folder or hub id"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, help="port"),
    name: Optional[str] = typer.Option(None, help="the model id clients ask for (default: MODEL)"),
    device: str = typer.Option("cpu", help="torch device"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
    batch_size: int = typer.Option(8, min=1, help="concurrent requests gathered into one forward pass"),
) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions)."""
    from llm_alloy.models.local import LocalBackend
    from llm_alloy.models.server import serve as run_server

    try:
        backend = LocalBackend(name or model, model, device, dtype, batch_size)
        with console.status(f"loading {model}"):
            backend.load()
        console.print(f"serving '{backend.name}' at http://{host}:{port}/v1")
        run_server(backend, host, port)
    except (OSError, *USER_ERRORS) as error:
        fail(error)


@app.command()
def explore(
    config: Path = typer.Argument(..., help="explore config (YAML); see README"),
    out: Path = typer.Argument(..., help="run directory; rerun the same command to resume"),
    report: bool = typer.Option(True, help="write OUT/report.html at the end"),
) -> None:
    """Bohdi: grow a knowledge tree with the sources, generate data where the target is weak, train it."""
    from llm_alloy.explore.config import ExploreConfig

    try:
        run_explore(load_config(config, ExploreConfig), out, report)
    except USER_ERRORS as error:
        fail(error)


def run_explore(explore_config, out: Path, report: bool) -> None:
    from llm_alloy.explore.run import ExploreRun, stages

    run = ExploreRun(explore_config, out, log=lambda line: console.print(escape(line)))
    all_stages = stages(explore_config)
    console.print(f"run directory {out}: {len(run.state.done)}/{len(all_stages)} stages already done")
    try:
        with progress_bar() as progress:
            task = progress.add_task("explore", total=len(all_stages), completed=len(run.state.done))

            def on_stage(stage: str, metrics: dict) -> None:
                progress.advance(task)
                progress.console.print(escape(stage_line(stage, metrics)))

            run.run(on_stage)
    finally:
        run.close()
    if report:
        write_report(out)


def stage_line(stage: str, metrics: dict) -> str:
    if metrics.get("kind") == "explore":
        return (
            f"{stage}: leader {metrics['leader']}, {metrics['questions']} questions kept, "
            f"{metrics['dropped']} dropped, {metrics['abandoned_paths']} paths abandoned, {metrics['domains']} domains"
        )
    if metrics.get("kind") == "train":
        losses = metrics.get("losses") or []
        loss = f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
        return f"{stage}: trained on {metrics['examples']} examples{loss}"
    return f"{stage}: {len(metrics.get('rebirths', []))} nodes reborn"


def write_report(out: Path) -> None:
    from llm_alloy.report.explore_report import write_explore_report

    path = write_explore_report(out)
    console.print(f"report: {path}")


@app.command()
def report(out: Path = typer.Argument(..., help="a run directory of alloy explore")) -> None:
    """Write OUT/report.html: the tree, allocation, per-domain accuracy, imbalance, tokens and cost."""
    try:
        write_report(out)
    except USER_ERRORS as error:
        fail(error)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="run directory (resumable)")) -> None:
    """The embedded default: Bohdi on the packaged models, on CPU, offline, in minutes."""
    from llm_alloy.explore.config import ExploreConfig, demo_config

    try:
        run_explore(ExploreConfig.model_validate(demo_config()), out, report=True)
    except USER_ERRORS as error:
        fail(error)


@logs_app.command("import-fusionbench")
def logs_import_fusionbench(
    source: Path = typer.Argument(..., help="LLMFusionBench rows: .csv, .jsonl, .parquet or a `datasets` directory"),
    out: Path = typer.Argument(..., help="logs to write: .jsonl, .parquet or a directory (datasets.save_to_disk)"),
    embeddings: Optional[Path] = typer.Option(None, help="query embedding table directory (default: OUT without suffix + '.embeddings')"),
    arms_per_query: Optional[int] = typer.Option(None, min=1, help="required arms per query (40 for the full benchmark)"),
    allow_missing_arms: bool = typer.Option(False, help="accept queries that lack some arms (dropped failed calls)"),
) -> None:
    """Import LLMFusionBench rows as id-keyed logs plus a query embedding table (costs become USD)."""
    from llm_alloy.logs.fusionbench import import_fusionbench
    from llm_alloy.logs.io import write_logs

    try:
        records, table = import_fusionbench(source, arms_per_query=arms_per_query, allow_missing_arms=allow_missing_arms)
        write_logs(records, out)
        table_dir = table.save(embeddings or out.with_name(out.stem + ".embeddings"))
    except USER_ERRORS as error:
        fail(error)
    arms = len({r.arm for r in records})
    console.print(f"{len(records)} rows: {len(table)} queries x {arms} arms -> {out}; embeddings -> {table_dir}")


@logs_app.command("collect")
def logs_collect(
    config: str = typer.Argument(..., help="collect config (YAML), or 'demo' for the shipped one"),
    out: Path = typer.Argument(..., help="output directory; rerun the same command to resume"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Send a query set to every arm (model x prompt style), score the answers, append OUT/logs.jsonl."""
    from llm_alloy.logs.collect import collect_logs, demo_collect_config, load_collect_config

    try:
        settings = demo_collect_config() if config == "demo" else load_collect_config(config)
        summary = collect_logs(settings, out, progress=progress)
    except (OSError, *USER_ERRORS) as error:
        fail(error)
    table = Table("arm", "rows", "performance", "judge", "cost $", "truncated", title="arms")
    for arm, stats in sorted(summary.arms.items()):
        table.add_row(
            arm, str(stats.rows), number(stats.mean_performance), number(stats.mean_judge),
            f"{stats.cost_usd:.6f}", str(stats.truncated),
        )
    Console().print(table)
    console.print(
        f"{summary.written} rows written, {summary.already_logged} already logged; {summary.model_calls} model calls, "
        f"{summary.cached_calls} from cache, {summary.judge_failures} judge failures; "
        f"${summary.cost_usd:.6f} spent -> {summary.logs_path}"
    )


def number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


@route_app.command("train")
def route_train(
    config: Path = typer.Argument(..., help="route train config (YAML): logs, router, params, scenario, ...; see README"),
    out: Path = typer.Argument(..., help="router directory to write (router.safetensors + router.json)"),
) -> None:
    """Train a router on logs, save it, and compare it on the test split with the best single arm and an oracle."""
    from llm_alloy.route.train import RouteTrainConfig, train_router

    try:
        result = train_router(load_config(config, RouteTrainConfig), out)
    except USER_ERRORS as error:
        fail(error)
    console.print(f"router ({result.router.kind}, {len(result.router.arms)} arms) saved to {result.directory}")
    print(result.table.to_markdown())


@route_app.command("eval")
def route_eval(
    router: Path = typer.Argument(..., help="a router directory written by `alloy route train`"),
    logs: Path = typer.Argument(..., help="log records: .jsonl, .parquet or a datasets directory"),
    split: str = typer.Option("test", help="train, validation or test: the router's own split of LOGS"),
    embeddings: Optional[Path] = typer.Option(None, help="query embedding table directory (default: embed the query texts)"),
    all_scenarios: bool = typer.Option(False, "--all-scenarios", help="score the choices under every scenario, not only the router's"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the rows as JSON"),
) -> None:
    """Reward, performance and cost of a saved router against the best single arm, an oracle and random choice."""
    from llm_alloy.files import write_atomic
    from llm_alloy.logs.matrix import SCENARIOS
    from llm_alloy.route.train import evaluate_router

    try:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"--split must be train, validation or test (got '{split}')")
        table = evaluate_router(router, logs, split, embeddings, list(SCENARIOS) if all_scenarios else None)
    except USER_ERRORS as error:
        fail(error)
    print(table.to_markdown())
    if output:
        write_atomic(output, json.dumps({"split": table.split, "queries": table.n_queries, "rows": table.to_dicts()}, indent=2))


@route_app.command("serve")
def route_serve(
    router_dir: Path = typer.Argument(..., help="a saved router directory"),
    config: Path = typer.Argument(..., help="a config whose models: list declares the arms' models (e.g. the collect config)"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, help="port"),
) -> None:
    """OpenAI-compatible endpoint: model 'router' forwards each request to the routed arm (header x-alloy-arm)."""
    from llm_alloy.route.serve import serve_router

    try:
        console.print(f"serving 'router' at http://{host}:{port}/v1")
        serve_router(router_dir, config, host, port)
    except (OSError, *USER_ERRORS) as error:
        fail(error)


@templates_app.command("build")
def templates_build(
    config: Path = typer.Argument(..., help="templates config (YAML); see README"),
    out: Path = typer.Argument(..., help="store directory; rerun the same command to resume"),
) -> None:
    """Summarise the top responses of every training query into a thought template, with embeddings."""
    from llm_alloy.thought.pipeline import TemplatesConfig, build_from_config

    try:
        store, report = build_from_config(load_config(config, TemplatesConfig), out)
    except USER_ERRORS as error:
        fail(error)
    console.print(
        f"{len(store.templates)} templates in {out}: {report.built} new, {report.reused} reused, "
        f"{report.skipped} given up as degenerate {dict(report.rejections)}, "
        f"{report.without_top_responses} training queries without a scored response, "
        f"{report.refused_queries} validation/test queries left out"
    )


@templates_app.command("apply")
def templates_apply(
    store: Path = typer.Argument(..., help="a store directory written by `alloy templates build`"),
    query: Optional[str] = typer.Option(None, "--query", "-q", help="one query"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="JSONL, one {'query': ..., 'task': ...} a line"),
    task: Optional[str] = typer.Option(None, "--task", help="the task of --query (or of --input lines without one); omit for task-agnostic retrieval"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL of {'prompt', 'templates', ...} (default: print)"),
    k: int = typer.Option(3, "--k", "-k", min=1, help="templates per query"),
) -> None:
    """Put the most similar templates (same task first) before each query; the JSONL feeds `alloy generate --input`."""
    from llm_alloy.files import write_atomic
    from llm_alloy.thought.pipeline import apply_templates, read_queries
    from llm_alloy.thought.templates import TemplateStore

    try:
        if (query is None) == (input is None):
            raise ValueError("give exactly one of --query or --input")
        items = [{"query": query, "task": task}] if query is not None else read_queries(input)
        items = [{**item, "task": item["task"] or task} for item in items]
        applied = apply_templates(TemplateStore.load(store), items, k)
    except USER_ERRORS as error:
        fail(error)
    if query is not None and output is None:
        print(applied[0]["prompt"])
        return
    lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in applied)
    if output is None:
        sys.stdout.write(lines)
    else:
        write_atomic(output, lines)
        console.print(f"wrote {len(applied)} prompts to {output}")


@distill_app.command("sft")
def distill_sft_command(
    config: Path = typer.Argument(..., help="distill config (YAML); see README"),
    out: Path = typer.Argument(..., help="output directory: sft_data.jsonl, adapter/, model/"),
) -> None:
    """Fine-tune the target on the top-K logged responses of every training query (FusionFactory model level)."""
    from llm_alloy.distill.top_responses import DistillSFTConfig, distill_sft

    try:
        result = distill_sft(load_config(config, DistillSFTConfig), out)
    except USER_ERRORS as error:
        fail(error)
    summary, training = result.summary, result.training
    console.print(
        f"{summary.response_examples} response and {summary.label_examples} label examples "
        f"from {summary.train_queries} training queries -> {result.data_path}"
    )
    loss = f", loss {training.losses[0]:.3f} -> {training.losses[-1]:.3f}" if training.losses else ""
    adapter = f", adapter {training.adapter_dir}" if training.adapter_dir else ""
    console.print(f"trained {training.steps} steps{loss}: model {training.model_dir}{adapter}")


@distill_app.command("logits")
def distill_logits(
    config: str = typer.Argument(..., help="logit-fusion config (YAML), or 'demo' for the shipped one; see README"),
    out: Path = typer.Argument(..., help="run directory; rerun the same command to resume"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Logit-level fusion (FuseLLM / FusionX): the sources' top-k distributions distilled into the target."""
    from llm_alloy.distill.logit_run import demo_config_path, load_logit_config, run_logit_distill
    from llm_alloy.distill.vocab_map import VocabMapError

    try:
        settings = load_logit_config(demo_config_path() if config == "demo" else config)
        result = run_logit_distill(settings, out, progress=progress, say=lambda line: console.print(escape(line)))
    except (VocabMapError, *USER_ERRORS) as error:
        fail(error)
    losses = [entry["total"] for entry in result.log]
    console.print(f"trained {result.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; model {result.model_dir}; report {result.report}")


if __name__ == "__main__":
    app()
