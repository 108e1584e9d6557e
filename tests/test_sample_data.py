"""Sample data generator: layout, determinism, ids, injected defects vs. their manifest, language, CLI.

Small sizes throughout; each test names the defect it would catch.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from embedding_pipeline.cli import sample as sample_cli
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.sample import generate as sd
from embedding_pipeline.sample.compose import KEYWORDS_SCHEMA, PRODUCTS_SCHEMA, TABLE_SPECS
from embedding_pipeline.sample.defects import DEFECT_BY_KIND, DEFECTS, EXTRA_COLUMN, row_ids
from embedding_pipeline.sample.labels import LABEL_SCHEMA
from embedding_pipeline.sample.layout import EPOCH, ID_STRIDE, LANGS, LONG_TEXT_CHARS, MANIFEST_NAME
from embedding_pipeline.sample.vocabulary import vocabulary

DATES = ["2024-01-01", "2024-01-02", "2024-01-03"]
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
INLINE_TEXT_KINDS = ("null_text", "empty_text", "whitespace_text", "text_too_long")


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _main_table(part: Path) -> pa.Table:
    """The main stream of a partition (``part-NNNNN`` files in order), where clean rows live."""
    files = sorted(p for p in part.glob("part-*.parquet") if re.fullmatch(r"part-\d{5}\.parquet", p.name))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _text_ok(text: object) -> bool:
    return isinstance(text, str) and text.strip() != "" and len(text) < 500


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two days of keywords and products with 10% bad rows, bad files, several files per partition."""
    root = tmp_path_factory.mktemp("dirty")
    sd.generate(
        root,
        keywords=8000,
        products=3000,
        dates=DATES[:2],
        seed=7,
        bad_rate=0.1,
        bad_files=True,
        row_group_size=500,
        rows_per_file=1500,
    )
    return root


def category_heads(lang: str) -> dict[str, frozenset[str]]:
    """Category label (as written in the data of ``lang``) -> head nouns of every language that may
    appear under it; in Japanese mode a few English queries carry the Japanese category label."""
    own = vocabulary(lang)
    heads = {c.label: set(c.heads) for c in own.categories}
    for other in LANGS:
        for c in vocabulary(other).categories:
            heads[own.category(c.key).label] |= set(c.heads) | {h.lower() for h in c.heads}
    return {label: frozenset(words) for label, words in heads.items()}


def test_partition_layout_schemas_and_hive_discovery(tmp_path: Path) -> None:
    summary = sd.generate(tmp_path, keywords=3000, products=600, dates=DATES, row_group_size=400)
    assert set(summary["tables"]) == {"keywords", "products"}
    for table, schema, per_day in (
        ("keywords", KEYWORDS_SCHEMA, 1000),
        ("products", PRODUCTS_SCHEMA, 200),
    ):
        parts = sorted(p.name for p in (tmp_path / table).iterdir() if p.is_dir())
        assert parts == [f"dt={d}" for d in DATES]
        for d in DATES:
            files = sorted((tmp_path / table / f"dt={d}").iterdir())
            # The data file, and the relevance labels beside it (``_``: not data, sample.labels).
            assert [f.name for f in files] == ["_labels-00000.parquet", "part-00000.parquet"]
            assert pq.read_schema(files[0]) == LABEL_SCHEMA
            files = files[1:]
            assert pq.read_schema(files[0]) == schema
            assert pq.ParquetFile(files[0]).metadata.num_rows == per_day
        # The manifest must not be picked up as data: hive discovery over the table sees only rows.
        dataset = ds.dataset(tmp_path / table, format="parquet", partitioning="hive")
        assert dataset.count_rows() == 3 * per_day
        assert (tmp_path / table / MANIFEST_NAME).is_file()
    updated = pq.read_table(tmp_path / "keywords" / "dt=2024-01-02").column("updated_at")
    assert updated.type == pa.timestamp("us", tz="UTC")
    days = {v.date() for v in updated.to_pylist()}
    assert days == {date(2024, 1, 2)}, "updated_at must fall on the partition's day"


def test_several_row_groups_and_files_per_partition(tmp_path: Path) -> None:
    sd.generate(
        tmp_path, keywords=2500, products=0, dates=["2024-02-01"], row_group_size=300, rows_per_file=1000
    )
    part = tmp_path / "keywords" / "dt=2024-02-01"
    files = sorted(part.glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    sizes = [
        [pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).num_row_groups)]
        for f in files
    ]
    assert sizes == [[300, 300, 300, 100], [300, 300, 300, 100], [300, 200]]
    assert not (tmp_path / "products").exists(), "a table with zero rows requested is not generated"


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = dict(
        keywords=3000,
        products=900,
        dates=DATES,
        seed=11,
        bad_rate=0.05,
        bad_files=True,
        row_group_size=256,
        rows_per_file=700,
    )
    sd.generate(tmp_path / "a", **kwargs)
    sd.generate(tmp_path / "b", **kwargs)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and len(a) > 20
    sd.generate(tmp_path / "c", **{**kwargs, "seed": 12})
    c = _digests(tmp_path / "c")
    assert a["keywords/dt=2024-01-01/part-00000.parquet"] != c["keywords/dt=2024-01-01/part-00000.parquet"]


def test_partition_content_does_not_depend_on_other_dates_or_layout(tmp_path: Path) -> None:
    common: dict[str, Any] = dict(products=0, seed=3, bad_rate=0.05, row_group_size=300)
    sd.generate(tmp_path / "all", keywords=3000, dates=DATES, **common)
    sd.generate(tmp_path / "one", keywords=1000, dates=["2024-01-02"], **common)
    sd.generate(tmp_path / "reversed", keywords=3000, dates=list(reversed(DATES)), **common)
    part = "keywords/dt=2024-01-02/part-00000.parquet"
    assert (tmp_path / "all" / part).read_bytes() == (tmp_path / "one" / part).read_bytes()
    assert (tmp_path / "all" / part).read_bytes() == (tmp_path / "reversed" / part).read_bytes()
    # A row depends on its position, not on the partition's size: a bigger partition starts the same.
    sd.generate(tmp_path / "bigger", keywords=1700, dates=["2024-01-02"], **common)
    one = _main_table(tmp_path / "one/keywords/dt=2024-01-02")
    bigger = _main_table(tmp_path / "bigger/keywords/dt=2024-01-02")
    assert bigger.slice(0, one.num_rows).equals(one)
    # Row-group size and file split change the layout only, never the rows.
    sd.generate(
        tmp_path / "layout",
        keywords=1000,
        dates=["2024-01-02"],
        **{**common, "row_group_size": 77},
        rows_per_file=450,
    )
    assert _main_table(tmp_path / "layout/keywords/dt=2024-01-02").equals(
        _main_table(tmp_path / "one/keywords/dt=2024-01-02")
    )


def test_ids_unique_across_partitions_without_injected_duplicates(tmp_path: Path) -> None:
    sd.generate(tmp_path, keywords=6000, products=1500, dates=DATES, seed=5, row_group_size=1000)
    for table, id_column in (("keywords", "keyword_id"), ("products", "product_id")):
        ids = pq.read_table(tmp_path / table, columns=[id_column]).column(id_column).to_pylist()
        assert len(ids) == len(set(ids))
        for d in DATES:
            day = pq.read_table(tmp_path / table / f"dt={d}").column(id_column).to_pylist()
            days = (date.fromisoformat(d) - EPOCH).days
            assert all(days * ID_STRIDE < i < (days + 1) * ID_STRIDE for i in day), "ids derive from dt"


def test_bad_rate_within_tolerance_with_every_kind(tmp_path: Path) -> None:
    sd.generate(
        tmp_path, keywords=20000, products=0, dates=["2024-03-01"], bad_rate=0.05, row_group_size=5000
    )
    entry = sd.read_manifest(tmp_path, "keywords")["partitions"]["2024-03-01"]
    counts = {kind: rec["count"] for kind, rec in entry["injected"].items()}
    assert set(counts) == {d.kind for d in DEFECTS}
    assert 850 <= sum(counts.values()) <= 1150, counts  # binomial(20000, 0.05): sd ~31
    assert all(60 <= n <= 170 for n in counts.values()), counts  # equal mix of 9 kinds
    expected = entry["expected"]
    dead = {k: n for k, n in counts.items() if DEFECT_BY_KIND[k].expect == "dead_letter"}
    assert expected["dead_letter"] == dead
    assert expected["indexed"] + expected["dead_lettered"] == expected["rows_in"] == 20000
    total = sum(f["rows"] for f in entry["files"])
    assert total == 20000, "diverted rows still count in the partition"


def test_manifest_inline_defects_match_the_data(dirty: Path) -> None:
    manifest = sd.read_manifest(dirty, "keywords")
    for d in DATES[:2]:
        part = dirty / "keywords" / f"dt={d}"
        entry = manifest["partitions"][d]
        tables: dict[str, pa.Table] = {}

        def cell(file: str, row: int, column: str, part: Path = part, tables: dict = tables) -> Any:
            if file not in tables:
                tables[file] = pq.read_table(part / file)
            return tables[file].column(column)[row].as_py()

        checks = {
            "null_text": lambda v: v is None,
            "empty_text": lambda v: v == "",
            "whitespace_text": lambda v: isinstance(v, str) and v != "" and v.strip() == "",
            "text_too_long": lambda v: isinstance(v, str) and len(v) == LONG_TEXT_CHARS,
        }
        for kind, check in checks.items():
            rec = entry["injected"][kind]
            for id_, file, row in zip(rec["ids"], rec["files"], rec["rows"], strict=True):
                assert cell(file, row, "keyword_id") == id_
                assert check(cell(file, row, "keyword")), (kind, file, row)

        # Completeness: every bad text in the main stream is in the manifest, and nothing else is bad.
        main = _main_table(part)
        bad_text_ids = {
            i
            for i, t in zip(
                main.column("keyword_id").to_pylist(), main.column("keyword").to_pylist(), strict=True
            )
            if not _text_ok(t)
        }
        assert bad_text_ids == {i for k in INLINE_TEXT_KINDS for i in entry["injected"][k]["ids"]}


def test_manifest_duplicates_match_the_data(dirty: Path) -> None:
    manifest = sd.read_manifest(dirty, "keywords")
    first, second = DATES[:2]
    tables = {d: _main_table(dirty / "keywords" / f"dt={d}") for d in (first, second)}
    for d in (first, second):
        entry = manifest["partitions"][d]
        ids = tables[d].column("keyword_id").to_pylist()
        texts = dict(zip(ids, tables[d].column("keyword").to_pylist(), strict=True))
        dup = entry["injected"]["duplicate_id"]
        expected_ids = row_ids(date.fromisoformat(d), dup["duplicate_of_positions"]).tolist()
        assert dup["ids"] == expected_ids
        repeated = {i for i, n in Counter(ids).items() if n > 1}
        assert repeated == set(dup["ids"]), "ids repeat within a partition exactly where the manifest says"
        assert all(_text_ok(texts[i]) for i in dup["ids"]), "the original of a duplicate is a clean row"

    cross = manifest["partitions"][second]["injected"]["duplicate_id_cross_partition"]
    assert cross["original_dt"] == first and all(cross["original_present"])
    first_rows = dict(
        zip(
            tables[first].column("keyword_id").to_pylist(),
            tables[first].column("keyword").to_pylist(),
            strict=True,
        )
    )
    assert cross["ids"] == row_ids(date.fromisoformat(first), cross["original_positions"]).tolist()
    assert all(_text_ok(first_rows.get(i)) for i in cross["ids"]), (
        "cross-partition original is clean, present"
    )
    second_ids = set(tables[second].column("keyword_id").to_pylist())
    assert set(cross["ids"]) <= second_ids
    # The first day's predecessor was not generated: its "duplicates" are marked as having no original.
    first_cross = manifest["partitions"][first]["injected"]["duplicate_id_cross_partition"]
    assert first_cross["count"] > 0 and not any(first_cross["original_present"])


def test_manifest_schema_variant_rows_match_the_data(dirty: Path) -> None:
    for table in ("keywords", "products"):
        manifest = sd.read_manifest(dirty, table)
        spec = TABLE_SPECS[table]
        part = dirty / table / f"dt={DATES[0]}"
        entry = manifest["partitions"][DATES[0]]
        for kind, stem in (
            ("wrong_type", "part-wrongtype"),
            ("extra_column", "part-extracolumn"),
            ("missing_optional_column", "part-missingcol"),
        ):
            rec = entry["injected"][kind]
            assert rec["count"] > 0 and {f.split("-0")[0] for f in rec["files"]} == {stem}
            for file in set(rec["files"]):
                schema = pq.read_schema(part / file)
                if kind == "wrong_type":
                    assert schema.field(spec.text_column).type == pa.int64()
                elif kind == "extra_column":
                    assert EXTRA_COLUMN in schema.names
                else:
                    assert spec.optional_column not in schema.names
            ids = pq.read_table(part / rec["files"][0]).column(spec.id_column).to_pylist()
            assert ids[rec["rows"][0]] == rec["ids"][0]
        # Every row of the partition is accounted for: main stream + variants == rows.
        data_rows = sum(pq.ParquetFile(part / f["file"]).metadata.num_rows for f in entry["files"])
        assert data_rows == entry["rows"] == entry["expected"]["rows_in"]


def test_injection_leaves_clean_rows_unchanged(tmp_path: Path) -> None:
    common: dict[str, Any] = dict(keywords=3000, products=0, dates=["2024-04-01"], seed=9, row_group_size=400)
    sd.generate(tmp_path / "clean", **common)
    sd.generate(tmp_path / "bad", bad_rate=0.2, **common)
    clean = _main_table(tmp_path / "clean/keywords/dt=2024-04-01").to_pylist()
    bad = _main_table(tmp_path / "bad/keywords/dt=2024-04-01").to_pylist()
    entry = sd.read_manifest(tmp_path / "bad", "keywords")["partitions"]["2024-04-01"]
    injected = {p for rec in entry["injected"].values() for p in rec["positions"]}
    diverted = {
        p
        for k, rec in entry["injected"].items()
        if DEFECT_BY_KIND[k].placement != "inline"
        for p in rec["positions"]
    }
    main_positions = [p for p in range(3000) if p not in diverted]
    assert len(main_positions) == len(bad)
    for position, row in zip(main_positions, bad, strict=True):
        if position not in injected:
            assert row == clean[position]
    assert 450 <= len(injected) <= 750


def test_bad_files_are_present_and_broken_as_described(dirty: Path) -> None:
    for table in ("keywords", "products"):
        spec = TABLE_SPECS[table]
        part = dirty / table / f"dt={DATES[1]}"
        entry = sd.read_manifest(dirty, table)["partitions"][DATES[1]]
        kinds = {b["kind"]: b for b in entry["bad_files"]}
        assert set(kinds) == {"zero_rows", "missing_required_column", "id_wrong_type", "not_parquet"}

        empty = pq.ParquetFile(part / kinds["zero_rows"]["file"])
        assert empty.metadata.num_rows == 0 and empty.schema_arrow == spec.schema

        no_text = pq.read_schema(part / kinds["missing_required_column"]["file"])
        assert spec.text_column not in no_text.names and spec.id_column in no_text.names

        id_string = pq.read_table(part / kinds["id_wrong_type"]["file"])
        assert id_string.schema.field(spec.id_column).type == pa.string()
        assert id_string.column(spec.id_column).to_pylist() == kinds["id_wrong_type"]["ids"]

        with pytest.raises(pa.ArrowInvalid):
            pq.ParquetFile(part / kinds["not_parquet"]["file"])

        data_ids = set(pq.read_table(part / "part-00000.parquet").column(spec.id_column).to_pylist())
        assert not data_ids & set(kinds["missing_required_column"]["ids"]), "bad-file ids never collide"


def test_japanese_mode_writes_japanese(tmp_path: Path) -> None:
    sd.generate(tmp_path, keywords=4000, products=1000, dates=["2024-05-01"], lang="ja")
    keywords = pq.read_table(tmp_path / "keywords").to_pylist()
    ja = [r["keyword"] for r in keywords if r["lang"] == "ja"]
    en = [r["keyword"] for r in keywords if r["lang"] == "en"]
    assert all(JAPANESE.search(k) for k in ja)
    assert 0 < len(en) < 0.1 * len(keywords), "a few English queries, as in real Japanese search logs"
    assert all(k.isascii() for k in en)
    products = pq.read_table(tmp_path / "products").to_pylist()
    assert all(JAPANESE.search(p["product_name"]) for p in products)
    assert all(JAPANESE.search(p["description"]) for p in products if p["description"] is not None)
    assert any("【" in p["product_name"] for p in products), "EC-style promo brackets"
    assert any(p["brand"] and p["product_name"].endswith(f"| {p['brand']}") for p in products)
    assert any(p["brand"] is None for p in products) and any(p["description"] is None for p in products)


def test_english_mode_is_ascii(tmp_path: Path) -> None:
    sd.generate(tmp_path, keywords=3000, products=1000, dates=["2024-05-01"], lang="en")
    keywords = pq.read_table(tmp_path / "keywords").to_pylist()
    assert {r["lang"] for r in keywords} == {"en"}
    assert all(r["keyword"].isascii() and r["keyword"] == r["keyword"].lower() for r in keywords)
    products = pq.read_table(tmp_path / "products").to_pylist()
    for p in products:
        for value in (p["product_name"], p["description"], p["category"], p["brand"]):
            assert value is None or value.isascii(), value
    assert all(not JAPANESE.search(r["keyword"]) for r in keywords)


@pytest.mark.parametrize("lang", LANGS)
def test_keyword_and_product_categories_share_head_nouns(tmp_path: Path, lang: str) -> None:
    sd.generate(tmp_path, keywords=3000, products=1500, dates=["2024-06-01"], lang=lang)
    heads = category_heads(lang)
    keywords = pq.read_table(tmp_path / "keywords").to_pylist()
    products = pq.read_table(tmp_path / "products").to_pylist()
    product_categories = {p["category"] for p in products}
    assert product_categories == set(heads) and None not in product_categories
    labelled = [k for k in keywords if k["category"] is not None]
    assert {k["category"] for k in labelled} == product_categories
    assert 0 < len(keywords) - len(labelled) < 0.15 * len(keywords), "some queries have no category"
    assert all(any(h in k["keyword"] for h in heads[k["category"]]) for k in labelled)
    assert all(any(h in p["product_name"] for h in heads[p["category"]]) for p in products)
    # Linking by category makes sense: in every category some keyword and product share a head noun.
    for label, words in heads.items():
        kw = " ".join(k["keyword"] for k in labelled if k["category"] == label).lower()
        pn = " ".join(p["product_name"] for p in products if p["category"] == label).lower()
        assert any(w.lower() in kw and w.lower() in pn for w in words), label


@pytest.mark.parametrize("lang", LANGS)
def test_100k_keywords_are_mostly_distinct(tmp_path: Path, lang: str) -> None:
    summary = sd.generate(
        tmp_path, keywords=100_000, products=0, dates=["2024-07-01"], lang=lang, row_group_size=50_000
    )
    keywords = pq.read_table(tmp_path / "keywords", columns=["keyword"]).column("keyword").to_pylist()
    ratio = len(set(keywords)) / len(keywords)
    seconds = summary["tables"]["keywords"]["seconds"]
    print(f"{lang}: distinct ratio of 100k keywords = {ratio:.4f} (generated in {seconds} s)")
    assert ratio >= 0.9


def test_regenerating_a_partition_replaces_it_and_keeps_the_manifest_of_others(tmp_path: Path) -> None:
    sd.generate(
        tmp_path,
        keywords=2000,
        products=0,
        dates=DATES[:2],
        row_group_size=100,
        rows_per_file=200,
        bad_rate=0.05,
    )
    assert len(list((tmp_path / "keywords/dt=2024-01-02").glob("part-0*.parquet"))) == 5
    sd.generate(tmp_path, keywords=1000, products=0, dates=[DATES[1]], row_group_size=1000, bad_rate=0.05)
    assert [p.name for p in (tmp_path / "keywords/dt=2024-01-02").glob("part-0*.parquet")] == [
        "part-00000.parquet"
    ]
    assert not list((tmp_path / "keywords").glob(".*")), "no temporary directories left behind"
    manifest = sd.read_manifest(tmp_path, "keywords")
    assert list(manifest["partitions"]) == DATES[:2]
    assert manifest["partitions"][DATES[1]]["settings"]["row_group_size"] == 1000
    assert manifest["partitions"][DATES[0]]["settings"]["row_group_size"] == 100
    assert all(
        manifest["partitions"][DATES[1]]["injected"]["duplicate_id_cross_partition"]["original_present"]
    )


def test_small_totals_leave_empty_but_valid_partitions(tmp_path: Path) -> None:
    summary = sd.generate(tmp_path, keywords=2, products=0, dates=DATES)
    assert summary["tables"]["keywords"]["partitions"] == {DATES[0]: 1, DATES[1]: 1, DATES[2]: 0}
    empty = pq.ParquetFile(tmp_path / "keywords" / f"dt={DATES[2]}" / "part-00000.parquet")
    assert empty.metadata.num_rows == 0 and empty.schema_arrow == KEYWORDS_SCHEMA


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keywords": -1}, "non-negative"),
        ({"bad_rate": 1.5}, "between 0 and 1"),
        ({"bad_rate": float("nan")}, "between 0 and 1"),
        ({"dates": ["2024-02-30"]}, "invalid date"),
        ({"dates": ["2024-01-01", "2024-01-01"]}, "duplicate"),
        ({"lang": "ko"}, "lang"),
        ({"row_group_size": 0}, "row_group_size"),
        ({"tables": ["orders"]}, "tables"),
    ],
)
def test_api_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sd.generate(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir()), "nothing is written before the arguments are checked"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--keywords", "-5"], "must be at least 0"),
        (["--products", "ten"], "expected an integer"),
        (["--bad-rate", "1.5"], "between 0 and 1"),
        (["--bad-rate", "-0.1"], "between 0 and 1"),
        (["--dates", "2024-13-01"], "invalid date"),
        (["--dates", "20240101"], "expected YYYY-MM-DD"),
        (["--dates", "2024-01-01", "2024-01-01"], "duplicate dates"),
        (["--days", "3"], "--days needs --start-date"),
        (["--start-date", "2024-01-01", "--dates", "2024-01-02"], "not allowed with"),
        (["--start-date", "2024-01-01", "--days", "0"], "must be at least 1"),
        (["--row-group-size", "0"], "must be at least 1"),
        (["--lang", "ko"], "invalid choice"),
    ],
)
def test_cli_rejects_bad_arguments_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_module_entry_point_prints_one_line_per_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(sd.__file__).parents[2])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedding_pipeline.cli.sample",
            "--out",
            str(tmp_path),
            "--keywords",
            "900",
            "--products",
            "300",
            "--start-date",
            "2024-01-30",
            "--days",
            "3",
            "--lang",
            "en",
            "--seed",
            "1",
            "--bad-rate",
            "0.02",
            "--bad-files",
            "--row-group-size",
            "100",
            "--tables",
            "keywords",
            "products",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["keywords", "products"]
    assert "900 rows in 3 partitions" in lines[0] and "12 bad files" in lines[0]
    assert sorted(p.name for p in (tmp_path / "keywords").iterdir() if p.is_dir()) == [
        f"dt={date(2024, 1, 30) + timedelta(days=i)}" for i in range(3)
    ]
