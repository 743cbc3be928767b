"""Log files: exact round trips in every format, crash-safe appends, errors that say where."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_alloy.logs.io import LogFileError, append_logs, iter_logs, read_logs, write_logs
from llm_alloy.logs.schema import LogRecord


def make_records() -> list[LogRecord]:
    return [
        LogRecord(
            query_id="q1", arm="m1", model="m1", task="gsm8k", query="2+2?", prompt="2+2?",
            ground_truth="4", metric="numeric", response="It is 4.\nDone", performance=1.0,
            score_details={"extracted": "4", "nested": {"steps": [1, 2.5, None], "ok": True}},
            llm_judge=0.8, judge_model="judge-1", input_tokens=12, output_tokens=5, cost=1.234e-6,
            latency_s=0.25, finish_reason="stop", served_model="m1-2025", extra={"tests": ["assert f() == 1"]},
        ),
        LogRecord(
            query_id="q1", arm="m1_think", model="m1", prompt_style="think", task="gsm8k", query="2+2?",
            prompt="2+2?\n\nLet's think step by step.", response="Zwei plus zwei: 4 — ✓", performance=None,
            llm_judge=None, cost=0.1, sample_index=1, task_id="HumanEval/3",
        ),
        LogRecord(query_id="q2", arm="m2", model="m2", task="mbpp", query="write f", performance=0.0, cost=0.0),
    ]


@pytest.mark.parametrize("name", ["logs.jsonl", "logs.parquet", "logs_hf"])
def test_round_trip_is_exact_in_every_format(tmp_path, name):
    records = make_records()
    path = write_logs(records, tmp_path / name)
    assert read_logs(path) == records
    assert list(iter_logs(path)) == records


@pytest.mark.parametrize("name", ["logs.jsonl", "logs.parquet", "logs_hf"])
def test_write_replaces_previous_content(tmp_path, name):
    records = make_records()
    write_logs(records, tmp_path / name)
    write_logs(records[:1], tmp_path / name)
    assert read_logs(tmp_path / name) == records[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left behind


@pytest.mark.parametrize("name", ["logs.parquet", "logs_hf"])
def test_empty_log_keeps_its_schema(tmp_path, name):
    import pyarrow.parquet as pq

    write_logs([], tmp_path / name)
    assert read_logs(tmp_path / name) == []
    if name.endswith(".parquet"):
        schema = pq.read_schema(tmp_path / name)
        assert str(schema.field("performance").type) == "double"
        assert str(schema.field("score_details").type) == "string"


def test_parquet_stores_dict_fields_as_json_text(tmp_path):
    import pyarrow.parquet as pq

    write_logs(make_records(), tmp_path / "logs.parquet")
    column = pq.read_table(tmp_path / "logs.parquet").column("score_details").to_pylist()
    assert json.loads(column[0])["nested"] == {"steps": [1, 2.5, None], "ok": True}


def test_hf_directory_is_a_datasets_dataset(tmp_path):
    import datasets

    write_logs(make_records(), tmp_path / "logs_hf")
    dataset = datasets.load_from_disk(str(tmp_path / "logs_hf"))
    assert dataset.num_rows == 3
    assert dataset[1]["arm"] == "m1_think"


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(LogFileError, match="not a `datasets` directory; refusing"):
        write_logs(make_records(), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_iter_logs_streams_jsonl(tmp_path):
    path = write_logs(make_records(), tmp_path / "logs.jsonl")
    stream = iter_logs(path)
    assert next(stream).arm == "m1"
    with path.open("a") as handle:  # a line added after reading began is still seen: nothing was preloaded
        handle.write(make_records()[2].model_dump_json() + "\n")
    assert [r.query_id for r in stream] == ["q1", "q2", "q2"]


def test_append_adds_lines_and_creates_the_file(tmp_path):
    path = tmp_path / "sub" / "logs.jsonl"
    records = make_records()
    assert append_logs(records[:2], path) == 2
    assert append_logs(iter(records[2:]), path) == 1
    assert read_logs(path) == records
    assert path.read_text().count("\n") == 3


def test_crash_truncated_tail_is_skipped_then_cut_before_the_next_append(tmp_path):
    path = tmp_path / "logs.jsonl"
    records = make_records()
    append_logs(records[:2], path)
    torn = records[2].model_dump_json()[:40]
    with path.open("a") as handle:
        handle.write(torn)  # a crash in the middle of writing the third line

    with pytest.warns(UserWarning, match=r"logs.jsonl: skipping the torn last line 3"):
        assert read_logs(path) == records[:2]

    with pytest.warns(UserWarning, match="cutting a torn last line"):
        append_logs(records[2:], path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_logs(path) == records


def test_torn_line_without_any_newline_in_the_file_is_cut_whole(tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text('{"query_id": "q1", "ar')
    with pytest.warns(UserWarning):
        append_logs(make_records()[:1], path)
    assert read_logs(path) == make_records()[:1]


def test_malformed_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "logs.jsonl"
    lines = [r.model_dump_json() for r in make_records()]
    path.write_text(lines[0] + "\n" + lines[1][:30] + "\n" + lines[2] + "\n")
    with pytest.raises(LogFileError, match=r"logs.jsonl: line 2: not valid JSON") as info:
        read_logs(path)
    assert "\n" not in str(info.value)


def test_unparseable_tail_with_newline_is_not_a_crash_artifact(tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text(make_records()[0].model_dump_json() + "\n{broken\n")
    with pytest.raises(LogFileError, match="line 2: not valid JSON"):
        read_logs(path)


def test_jsonl_validation_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "logs.jsonl"
    good = make_records()[0].model_dump(mode="json")
    bad = dict(good, performance=1.5)
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LogFileError, match=r"logs.jsonl: line 2: performance: .*less than or equal to 1 \(got 1.5\)"):
        read_logs(path)
    path.write_text(json.dumps(dict(good, surprise=1)) + "\n")
    with pytest.raises(LogFileError, match="line 1: surprise: unknown field"):
        read_logs(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(LogFileError, match="line 1: expected a JSON object, got list"):
        read_logs(path)


def test_parquet_validation_error_names_file_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.model_dump(mode="json") for r in make_records()]
    for row in rows:
        row["score_details"], row["extra"] = json.dumps(row["score_details"]), json.dumps(row["extra"])
    rows[2]["cost"] = -1.0
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(LogFileError, match=r"bad.parquet: row 2: cost: .*greater than or equal to 0"):
        read_logs(tmp_path / "bad.parquet")

    rows[2]["cost"], rows[1]["extra"] = 0.0, "{not json"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(LogFileError, match=r"bad.parquet: row 1: extra: not valid JSON"):
        read_logs(tmp_path / "bad.parquet")


def test_nan_written_by_pandas_reads_as_missing(tmp_path):
    import pandas as pd

    rows = [r.model_dump(mode="json") for r in make_records()]
    for row in rows:
        row["score_details"], row["extra"] = json.dumps(row["score_details"]), json.dumps(row["extra"])
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "pandas.parquet", index=False)
    assert math.isnan(pd.read_parquet(tmp_path / "pandas.parquet")["performance"][1])
    assert read_logs(tmp_path / "pandas.parquet")[1].performance is None


def test_bad_paths_are_one_line_errors(tmp_path):
    with pytest.raises(LogFileError, match="no such log file"):
        read_logs(tmp_path / "missing.jsonl")
    with pytest.raises(LogFileError, match="unsupported log format '.csv'"):
        write_logs(make_records(), tmp_path / "logs.csv")
    with pytest.raises(LogFileError, match="only .jsonl logs can be appended"):
        append_logs(make_records(), tmp_path / "logs.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(LogFileError, match="not a `datasets` directory"):
        read_logs(tmp_path / "empty_dir")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(LogFileError, match="junk.parquet: not a readable Parquet file"):
        read_logs(tmp_path / "junk.parquet")


def test_a_dataset_dict_directory_asks_for_one_split(tmp_path):
    import datasets

    write_logs(make_records(), tmp_path / "one")
    split = datasets.load_from_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(LogFileError, match=r"several splits \(train, test\)"):
        read_logs(tmp_path / "both")
    assert read_logs(tmp_path / "both" / "train") == make_records()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    details=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    response=st.text(),
    performance=st.none() | st.floats(0, 1),
)
def test_any_record_round_trips_through_jsonl_and_parquet(tmp_path, details, extra, response, performance):
    record = LogRecord(
        query_id="q", arm="a", model="a", task="t", query="x", response=response,
        performance=performance, score_details=details, extra=extra,
    )
    for name in ("any.jsonl", "any.parquet"):
        write_logs([record], tmp_path / name)
        assert read_logs(tmp_path / name) == [record]


def test_nan_in_jsonl_reads_as_missing(tmp_path):
    row = dict(make_records()[2].model_dump(mode="json"), performance=float("nan"))
    (tmp_path / "nan.jsonl").write_text(json.dumps(row) + "\n")  # json.dumps writes the NaN token
    assert read_logs(tmp_path / "nan.jsonl")[0].performance is None


@pytest.mark.parametrize("name", ["logs.jsonl", "logs.parquet", "logs_hf"])
def test_a_write_that_fails_midway_leaves_the_old_content(tmp_path, name):
    write_logs(make_records(), tmp_path / name)

    def failing():
        yield make_records()[0]
        raise RuntimeError("collector died")

    with pytest.raises(RuntimeError, match="collector died"):
        write_logs(failing(), tmp_path / name)
    assert read_logs(tmp_path / name) == make_records()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
