"""The LLMFusionBench importer on a hand-made file in the published row layout."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

from llm_alloy.logs.embeddings import EmbeddingTable
from llm_alloy.logs.fusionbench import (
    FUSIONBENCH_ENCODER,
    FusionBenchFormatError,
    _parse_embedding,
    _parse_performance,
    import_fusionbench,
)
from llm_alloy.logs.io import read_logs, write_logs

MODELS = ["qwen2-7b-instruct", "gemma-2-9b-it"]
ARMS = ["qwen2-7b-instruct", "qwen2-7b-instruct_think", "gemma-2-9b-it", "gemma-2-9b-it_think"]
COLUMNS = [
    "task_name", "task_id", "task_description", "task_description_embedding", "query", "query_embedding",
    "ground_truth", "metric", "llm", "input_price", "output_price", "input_tokens_num", "output_tokens_num",
    "performance", "cost", "response", "llm_description", "llm_judge",
]


def gsm8k_prompt(question: str, think: bool) -> str:
    # The think variant re-indents the block, as LLMFusionBench's templates do: only whitespace differs.
    if think:
        return f"\n            Answer the following question.\n\n            Question: {question}\n            Let's think step by step\n            "
    return f"\n        Answer the following question.\n\n        Question: {question}\n        "


def mbpp_prompt(think: bool) -> str:
    prompt = ("You are an expert Python programmer, and here is your task: Write a function to add two numbers. "
              "Your code should pass these tests:\n\nassert add(1, 2) == 3\n Implement the function in this format: "
              "[BEGIN] <Your Code> [Done]\n")
    return prompt + ("\n  Let's think step by step." if think else "")


QUERIES = [
    # task, task_id, question, ground truth, metric, embedding as the file holds it, the vector it means
    ("gsm8k", None, "Tom has 3 apples and buys 15 more. How many?", "3 + 15 = 18\n#### 18", "GSM8K",
     "tensor([[0.1, -0.2, 3e-05, 0.4]])", [0.1, -0.2, 3e-05, 0.4]),
    ("gsm8k", None, "What is 6 times 7?", "6 * 7 = 42\n#### 42", "GSM8K",
     "tensor([[0.5, 0.25, -1.0, 2.0]], device='cuda:0')", [0.5, 0.25, -1.0, 2.0]),
    ("mbpp", 601, None, "['assert add(1, 2) == 3']", "code_eval",
     "[1.5, 0.0, -0.5, 7.0]", [1.5, 0.0, -0.5, 7.0]),
]

# (performance cell, llm_judge cell) per query and arm, as the published file would hold them.
SCORES = [
    [(1.0, 0.8), (1.0, 1.0), (0.0, float("nan")), (1.0, 0.6)],
    [(0.0, 0.0), (1.0, 0.9), (1.0, ""), (0.0, 0.3)],
    [("{'pass@1': np.float64(1.0)}", 0.7), ("{'pass@1': np.float64(0.0)}", 0.0),
     ("{'pass@1': np.float64(0.0)}", 0.1), ("{'pass@1': np.float64(1.0)}", 1.0)],
]


def fusionbench_rows() -> list[dict]:
    """3 queries x 4 arms in LLMFusionBench order, embeddings only on each block's first row."""
    rows = []
    for q, (task, task_id, question, truth, metric, embedding, _) in enumerate(QUERIES):
        for a, arm in enumerate(ARMS):
            think = arm.endswith("_think")
            prompt = mbpp_prompt(think) if task == "mbpp" else gsm8k_prompt(question, think)
            performance, judge = SCORES[q][a]
            input_tokens, output_tokens = 100 + a, 50 * (a + 1)
            price = 0.2 if arm.startswith("qwen") else 0.1
            rows.append({
                "task_name": task, "task_id": task_id, "task_description": f"{task} description",
                "task_description_embedding": "tensor([[9.0, 9.0]])" if a == 0 else "",
                "query": prompt, "query_embedding": embedding if a == 0 else "",
                "ground_truth": truth, "metric": metric, "llm": arm,
                "input_price": price, "output_price": price,
                "input_tokens_num": input_tokens, "output_tokens_num": output_tokens,
                "performance": performance, "cost": (input_tokens + output_tokens) * price,
                "response": f"[BEGIN] def add(a, b): return a + b [Done] \\boxed{{{q}}} — {arm}",
                "llm_description": f"{arm.removesuffix('_think')} is a model.", "llm_judge": judge,
            })
    return rows


def write_csv(rows: list[dict], path) -> None:
    """As LLMFusionBench's data_combine.py writes it: pandas, QUOTE_MINIMAL, backslash escapes."""
    import pandas as pd

    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL, escapechar="\\")


def write_jsonl(rows: list[dict], path) -> None:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")  # NaN judge cells come out as the NaN token


def write_parquet(rows: list[dict], path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A single Arrow type per column: the mixed float / dict-string performance becomes text.
    table_rows = [dict(row, performance=str(row["performance"]),
                       llm_judge=None if row["llm_judge"] in ("",) else float(row["llm_judge"]),
                       task_id=None if row["task_id"] is None else str(row["task_id"])) for row in rows]
    pq.write_table(pa.Table.from_pylist(table_rows), path)


def write_hf_dir(rows: list[dict], path) -> None:
    import datasets
    import pyarrow.parquet as pq

    write_parquet(rows, str(path) + ".parquet")
    datasets.Dataset(pq.read_table(str(path) + ".parquet")).save_to_disk(str(path))


WRITERS = {"file.csv": write_csv, "file.jsonl": write_jsonl, "file.parquet": write_parquet, "file_hf": write_hf_dir}


@pytest.fixture(scope="module")
def imported():
    return import_fusionbench(fusionbench_rows(), progress=False)


def test_every_row_becomes_a_record_keyed_by_query_and_arm(imported):
    records, _ = imported
    assert len(records) == 12
    assert [r.arm for r in records] == ARMS * 3
    ids = [r.query_id for r in records]
    assert len(set(ids)) == 3
    assert all(len(set(ids[i : i + 4])) == 1 for i in range(0, 12, 4))
    assert ids[0].startswith("gsm8k-") and ids[8].startswith("mbpp-")
    assert {(r.query_id, r.arm) for r in records}.__len__() == 12


def test_arms_split_into_model_and_prompt_style(imported):
    records, _ = imported
    assert [(r.model, r.prompt_style) for r in records[:4]] == [
        ("qwen2-7b-instruct", "direct"), ("qwen2-7b-instruct", "think"),
        ("gemma-2-9b-it", "direct"), ("gemma-2-9b-it", "think"),
    ]


def test_query_is_the_direct_prompt_and_prompt_is_what_was_sent(imported):
    records, _ = imported
    rows = fusionbench_rows()
    for record, row in zip(records, rows):
        assert record.prompt == row["query"]
    for block in range(3):
        direct_prompt = rows[4 * block]["query"]
        assert all(r.query == direct_prompt for r in records[4 * block : 4 * block + 4])
    assert "think step by step" in records[1].prompt and "think step by step" not in records[1].query


def test_performance_is_a_float_and_the_code_dict_goes_to_score_details(imported):
    records, _ = imported
    assert [r.performance for r in records] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert records[8].score_details == {"pass@1": 1.0}
    assert records[0].score_details == {}


def test_cost_is_converted_from_micro_dollars_to_dollars(imported):
    records, _ = imported
    # (100 + 50) tokens x 0.2 USD per million = 30 micro-dollars in the file.
    assert records[0].cost == pytest.approx(30e-6)
    assert records[3].cost == pytest.approx((103 + 200) * 0.1 * 1e-6)
    assert (records[0].input_tokens, records[0].output_tokens) == (100, 50)
    assert records[0].extra["input_price_per_mtok"] == 0.2
    assert records[0].extra["token_counter"] == "gpt2"


def test_judge_nan_and_empty_become_none(imported):
    records, _ = imported
    assert records[0].llm_judge == 0.8
    assert records[2].llm_judge is None  # NaN
    assert records[6].llm_judge is None  # empty
    assert records[4].llm_judge == 0.0  # a real zero stays a zero


def test_task_fields_and_metric_ids(imported):
    records, _ = imported
    assert records[0].metric == "numeric" and records[0].extra["source_metric"] == "GSM8K"
    assert records[8].metric == "code" and records[8].extra["source_metric"] == "code_eval"
    assert records[8].task_id == "601" and records[0].task_id is None
    assert records[0].ground_truth.endswith("#### 18")
    assert records[5].task_description == "gsm8k description"


def test_embeddings_come_back_as_a_table_keyed_by_query_id(imported):
    records, table = imported
    assert isinstance(table, EmbeddingTable)
    assert table.encoder == FUSIONBENCH_ENCODER and table.pooling == "cls"
    assert table.ids == [records[0].query_id, records[4].query_id, records[8].query_id]
    assert table.vectors.dtype == np.float32
    np.testing.assert_allclose(table.vectors, np.array([q[-1] for q in QUERIES], dtype=np.float32))
    np.testing.assert_allclose(table.lookup([records[9].query_id])[0], QUERIES[2][-1])


def test_query_ids_depend_on_content_not_position(imported):
    records, _ = imported
    rows = fusionbench_rows()
    reordered, _ = import_fusionbench(rows[8:] + rows[:8], progress=False)
    assert [r.query_id for r in reordered] == [r.query_id for r in records[8:] + records[:8]]
    other_task = [dict(row, task_name="math") for row in rows[:4]]
    moved, _ = import_fusionbench(other_task, progress=False)
    assert moved[0].query_id != records[0].query_id


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_the_same_rows_import_identically_from_every_file_format(tmp_path, imported, name):
    WRITERS[name](fusionbench_rows(), tmp_path / name)
    records, table = import_fusionbench(tmp_path / name, progress=False)
    expected, expected_table = imported
    assert [r.model_dump() for r in records] == [r.model_dump() for r in expected]
    assert table.ids == expected_table.ids
    np.testing.assert_array_equal(table.vectors, expected_table.vectors)


def test_csv_backslashes_survive_the_escaped_layout(tmp_path):
    write_csv(fusionbench_rows(), tmp_path / "file.csv")
    assert "\\\\boxed" in (tmp_path / "file.csv").read_text()  # the writer doubled it
    records, _ = import_fusionbench(tmp_path / "file.csv", progress=False)
    assert "\\boxed{0}" in records[0].response and "\\\\" not in records[0].response


def test_imported_records_round_trip_through_the_log_writers(tmp_path, imported):
    records, _ = imported
    write_logs(records, tmp_path / "imported.parquet")
    assert read_logs(tmp_path / "imported.parquet") == records


def test_a_question_asked_twice_is_a_second_sample_of_one_query():
    rows = fusionbench_rows()
    records, table = import_fusionbench(rows + copy.deepcopy(rows[:4]), progress=False)
    assert records[12].query_id == records[0].query_id
    assert [r.sample_index for r in records[12:]] == [1, 1, 1, 1]
    assert records[0].sample_index == 0
    assert len(table) == 3


# --- broken files ---


def test_missing_arm_names_the_block_and_the_arm():
    rows = fusionbench_rows()
    del rows[7]  # the second block loses gemma-2-9b-it_think
    with pytest.raises(FusionBenchFormatError, match=r"rows: row 4 \(task gsm8k, .*\): block has 3 of 4 arms, missing gemma-2-9b-it_think") as info:
        import_fusionbench(rows, progress=False)
    assert "\n" not in str(info.value)
    records, _ = import_fusionbench(rows, allow_missing_arms=True, progress=False)
    assert len(records) == 11 and len({r.query_id for r in records}) == 3


def test_duplicated_arm_names_its_row():
    rows = fusionbench_rows()
    rows[6]["llm"] = "qwen2-7b-instruct"  # gemma's direct row relabelled: qwen-direct twice
    with pytest.raises(FusionBenchFormatError, match=r"row 6: arm 'qwen2-7b-instruct' appears twice in the block starting at row 4"):
        import_fusionbench(rows, progress=False)


def test_missing_embedding_on_a_first_row_is_an_error(tmp_path):
    rows = fusionbench_rows()
    rows[4]["query_embedding"] = ""
    write_csv(rows, tmp_path / "file.csv")
    with pytest.raises(FusionBenchFormatError, match=r"file.csv: row 4 \(task gsm8k, .*\): the block's first row has no query_embedding"):
        import_fusionbench(tmp_path / "file.csv", progress=False)


def test_a_file_cut_in_the_middle_of_a_block_is_an_error(tmp_path):
    rows = fusionbench_rows()[:10]
    write_jsonl(rows, tmp_path / "cut.jsonl")
    with pytest.raises(FusionBenchFormatError, match=r"cut.jsonl: row 8 \(task mbpp, .*\): block has 2 of 4 arms, missing gemma-2-9b-it, gemma-2-9b-it_think"):
        import_fusionbench(tmp_path / "cut.jsonl", progress=False)


def test_an_unknown_arm_in_one_block_is_reported_there():
    rows = fusionbench_rows()
    rows[10]["llm"] = "llama-3.1-8b-instruct"
    with pytest.raises(FusionBenchFormatError, match=r"row 8 .*arms not in the other blocks: llama-3.1-8b-instruct"):
        import_fusionbench(rows, progress=False)


def test_arms_per_query_is_checked():
    with pytest.raises(FusionBenchFormatError, match="expected 40 arms per query, but the blocks have 4"):
        import_fusionbench(fusionbench_rows(), arms_per_query=40, progress=False)
    assert len(import_fusionbench(fusionbench_rows(), arms_per_query=4, progress=False)[0]) == 12


def test_bad_cells_name_row_and_column():
    rows = fusionbench_rows()
    rows[9]["performance"] = "__import__('os').system('echo pwned')"
    with pytest.raises(FusionBenchFormatError, match=r"row 9: performance: not a number"):
        import_fusionbench(rows, progress=False)
    rows = fusionbench_rows()
    rows[5]["performance"] = 1.5
    with pytest.raises(FusionBenchFormatError, match=r"rows: row 5: performance: .*less than or equal to 1"):
        import_fusionbench(rows, progress=False)
    rows = fusionbench_rows()
    rows[4]["query_embedding"] = "tensor([0.1, 0.2, ..., 0.4])"
    with pytest.raises(FusionBenchFormatError, match=r"row 4: query_embedding: abbreviated"):
        import_fusionbench(rows, progress=False)
    rows = fusionbench_rows()
    rows[4]["query_embedding"] = "[0.1, 0.2]"
    with pytest.raises(FusionBenchFormatError, match=r"row 4: query_embedding: 2 values, but earlier embeddings have 4"):
        import_fusionbench(rows, progress=False)
    rows = fusionbench_rows()
    rows[3]["llm"] = ""
    with pytest.raises(FusionBenchFormatError, match=r"row 3: llm is empty"):
        import_fusionbench(rows, progress=False)


def test_files_that_are_not_the_layout(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "llm"} for row in fusionbench_rows()]
    with pytest.raises(FusionBenchFormatError, match=r"missing columns: llm"):
        import_fusionbench(rows, progress=False)
    with pytest.raises(FusionBenchFormatError, match="no rows"):
        import_fusionbench([], progress=False)
    with pytest.raises(FusionBenchFormatError, match="no such file"):
        import_fusionbench(tmp_path / "absent.csv", progress=False)
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(FusionBenchFormatError, match="unsupported format '.xlsx'"):
        import_fusionbench(tmp_path / "x.xlsx", progress=False)


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("{'pass@1': np.float64(1.0)}", (1.0, {"pass@1": 1.0})),
        ("{'pass@1': 0.0}", (0.0, {"pass@1": 0.0})),
        ('{"pass@1": 1}', (1.0, {"pass@1": 1.0})),
        ({"pass@1": np.float64(1.0)}, (1.0, {"pass@1": 1.0})),
        ("{'pass@1': np.float64(0.0), 'pass@5': np.float64(1.0)}", (0.0, {"pass@1": 0.0, "pass@5": 1.0})),
        (0.5, (0.5, {})),
        (np.float32(0.25), (0.25, {})),
        ("0.75", (0.75, {})),
        ("", (None, {})),
        (float("nan"), (None, {})),
        (None, (None, {})),
    ],
)
def test_performance_cells(cell, expected):
    assert _parse_performance(cell, "here") == expected


def test_ambiguous_score_dict_is_rejected():
    with pytest.raises(FusionBenchFormatError, match="here: cannot read a score"):
        _parse_performance("{'a': 1.0, 'b': 0.0}", "here")


@pytest.mark.parametrize(
    "cell",
    ["tensor([[0.5, -1e-05, 2.0]])", "tensor([0.5, -1e-05, 2.0], device='cuda:0')", "[0.5, -1e-05, 2.0]",
     "[ 0.5   -1e-05  2.0 ]", [0.5, -1e-05, 2.0]],
)
def test_embedding_cells(cell):
    np.testing.assert_allclose(_parse_embedding(cell, "here"), np.array([0.5, -1e-05, 2.0], dtype=np.float32))
