"""Hostile input, generated: whatever a partition holds, every row ends indexed in both stores or
dead-lettered at embed with a reason, the stores agree, and a run fails, if at all, with one of
our errors - never a raw library traceback. Real stores (Qdrant local mode, the ES emulator or
``ES_URL``), the real inference server, the stage functions in run order (local.inline_runner).
"""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.generations.agreement import verify_pair
from embedding_pipeline.local.inline_runner import run_keywords
from embedding_pipeline.runs.dead_letter import read_dead_letters
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import SchemaError
from embedding_pipeline.runs.report import AccountingError, read_report
from embedding_pipeline.stores.registry import open_stores
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "tiny_bert"
EMBED_REASONS = {
    "missing_id",
    "null_text",
    "empty_text",
    "wrong_type",
    "duplicate_id",
    "text_too_long",
    "id_too_long",
    "invalid_field",
    "non_finite_vector",
}
_examples = itertools.count()

odd_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]),  # Arrow strings are UTF-8: no lone surrogates
    max_size=40,
)
huge = st.integers(0, 1_100_000).map(lambda n: "語" * n)  # up to ~3 MB of UTF-8
texts = st.one_of(st.none(), odd_text, st.sampled_from(["", " \t\n", "\x00\x1f\x7f", "\u200b"]), huge)
string_ids = st.one_of(
    st.none(),
    odd_text,
    st.integers(0, 700).map(lambda n: "i" * n),  # around ES's 512-byte _id limit
    st.sampled_from(["", " ", "_id", "a/b", "..", "%00", "é" * 257]),
)
int_ids = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1]))


@st.composite
def partitions(draw: Any) -> tuple[pa.Table, str]:
    """One keyword partition file with hostile values; its columns' types vary too."""
    n = draw(st.integers(1, 12))
    id_kind = draw(st.sampled_from(["int", "string"]))
    ids = draw(st.lists(int_ids if id_kind == "int" else string_ids, min_size=n, max_size=n))
    text_kind = draw(st.sampled_from(["string", "int", "float", "binary"]))
    if text_kind == "string":
        keyword = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())
    elif text_kind == "int":
        keyword = pa.array(draw(st.lists(st.integers(-5, 5) | st.none(), min_size=n, max_size=n)), pa.int64())
    elif text_kind == "float":
        values = st.floats(allow_nan=True, allow_infinity=True) | st.none()
        keyword = pa.array(draw(st.lists(values, min_size=n, max_size=n)), pa.float64())
    else:  # invalid UTF-8 and lone surrogates, as bytes
        raw = st.binary(max_size=12) | st.just("\ud800x".encode("utf-8", "surrogatepass"))
        keyword = pa.array(draw(st.lists(raw, min_size=n, max_size=n)), pa.binary())
    categories = st.one_of(st.none(), odd_text, st.integers(0, 40_000).map(lambda k: "c" * k))
    columns = {
        "keyword_id": pa.array(ids, pa.int64() if id_kind == "int" else pa.string()),
        "keyword": keyword,
        "category": pa.array(draw(st.lists(categories, min_size=n, max_size=n)), pa.string()),
        # Columns the stage does not read: nested, list and map values must not disturb it.
        "extra_struct": pa.array([{"a": i, "b": [str(i)]} for i in range(n)]),
        "extra_map": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
    }
    return pa.table(columns), text_kind


@pytest.fixture
def hostile(pipeline_services) -> dict[str, Any]:
    return {"tmp": pipeline_services}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(partitions())
def test_every_hostile_row_is_indexed_in_both_stores_or_dead_lettered_with_a_reason(hostile, drawn):
    table, text_kind = drawn
    example = next(_examples)
    root, run_dir, alias = hostile["tmp"] / f"data{example}", hostile["tmp"] / f"run{example}", f"h{example}"
    path = root / "keywords" / "dt=2024-01-01" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    try:
        report = run_keywords(root, ["2024-01-01"], run_dir, MODEL, InputSpec(), alias)
    except SchemaError as exc:  # a column type no row can be read as: the file is refused, by name
        assert text_kind == "binary" and "column 'keyword' has type binary" in str(exc)
        return
    except AccountingError:  # most rows were dead-lettered: over the run's threshold, said plainly
        report = read_report(run_dir)
        assert all("dead-letter ratio" in p for p in report["problems"]), report["problems"]
    except PipelineError as exc:  # pragma: no cover - shown in full if hypothesis finds one
        pytest.fail(f"the run failed with {type(exc).__name__}: {exc}")
    assert report["rows_read"] == table.num_rows
    letters = read_dead_letters(run_dir)
    assert {letter["stage"] for letter in letters} <= {"embed"}, letters  # stores refused nothing
    assert {letter["reason"] for letter in letters} <= EMBED_REASONS
    assert all(letter["error"] for letter in letters)
    for sink in ("qdrant", "es"):
        s = report["sinks"][sink]
        assert s["indexed"] + report["embed"]["dead_lettered"] == table.num_rows, (sink, s)
    with open_stores() as stores:
        agreement = verify_pair((stores["qdrant"], stores["es"]), (alias, alias), "keyword_id")
    assert agreement.ok, agreement.describe()
    assert agreement.compared == report["sinks"]["qdrant"]["indexed"]


def test_values_only_elasticsearch_refuses_are_dead_lettered_before_any_store_is_written(hostile):
    """The cases the generator found or must keep finding: an empty id (ES refuses an empty
    ``_id``), a keyword field over Lucene's 32766-byte term limit, and a U+2028 inside a value
    (a line separator to ``str.splitlines``, which once split a dead-letter line in two)."""
    root, run_dir = hostile["tmp"] / "data", hostile["tmp"] / "run"
    path = root / "keywords" / "dt=2024-01-01" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    rows = {"keyword_id": ["", "big", "ok", "sep"], "keyword": ["a", "b", "c", None]}
    rows["category"] = ["x", "c" * 40_000, "food", "line\u2028separator"]
    pq.write_table(pa.table(rows), path)
    with pytest.raises(AccountingError, match="dead-letter ratio"):  # 3 of 4 rows: over the threshold
        run_keywords(root, ["2024-01-01"], run_dir, MODEL, InputSpec(), "hv")
    letters = {letter["record_id"]: letter for letter in read_dead_letters(run_dir)}
    assert {key: letter["reason"] for key, letter in letters.items()} == {
        "": "missing_id",
        "big": "invalid_field",
        "sep": "null_text",
    }
    assert letters["big"]["error"] == "category is 40000 bytes; a keyword field takes at most 32766"
    assert letters["sep"]["row"]["category"] == "line\u2028separator"
    with open_stores() as stores:
        agreement = verify_pair((stores["qdrant"], stores["es"]), ("hv", "hv"), "keyword_id")
    assert agreement.ok and agreement.compared == 1
