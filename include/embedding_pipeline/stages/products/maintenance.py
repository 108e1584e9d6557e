"""Keeping every product's keyword list equal to a from-scratch relink when keywords change.

A product's stored list changes only if a keyword in it changed or was deleted, or if a new or
changed keyword now scores at least the list's entry score (its K-th score; for a list shorter
than K, the threshold - any eligible keyword enters). So the product stage reads the keyword
collection's change log (:class:`runs.state.ChangeLog`) since the position its state records
and relinks exactly these products:

holders
    products whose stored ``keyword_ids`` hold a changed or deleted keyword (a payload filter on
    the product vector collection);
entrants
    for each new or changed keyword that passes the static ``keyword_filter``: products it could
    enter (same ``match_fields`` value, or none) whose ``entry_score`` it reaches. Two exact ways:

    - ``bands`` (a Qdrant server): Qdrant has no per-point threshold, so products are searched
      in bands of ``entry_score`` (threshold = the band's floor, filters on the payload indexes)
      and the hits checked exactly: the over-fetch is bounded by the band width.
    - ``scan`` (local mode, where every filtered query is a Python loop over all points): one
      pass over the stored product vectors in blocks, scores against all changed keywords as one
      matrix product, compared with each product's entry score.

Products of tonight's own partitions are relinked by their chunks anyway; relinking runs after
them and reads the vectors they stored, so the order cannot leave a stale list. ``relink: all``
relinks every live product instead; so does a run whose keyword generation or link options (top_k,
threshold, filters, role, search settings) differ from the ones the stored lists were made with.
Lists linked in ``hybrid`` or ``lexical`` mode (``stages.products.fusion``) have no such bound: any
keyword change relinks every product.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.partitions import MAX_MAP_LENGTH
from embedding_pipeline.runs.staging import point_id
from embedding_pipeline.runs.state import ChangeLog, IndexState
from embedding_pipeline.runs.storage import StoragePath, write_parquet
from embedding_pipeline.stages.products.options import LinkOptions
from embedding_pipeline.stores.qdrant import points

log = logging.getLogger(__name__)

# Floors of the entry-score bands (cosine); the last band is open above.
BANDS = (-1.0, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Scores are stored rounded to 6 decimals; a keyword that ties the K-th score may enter (keyword-id
# order breaks the tie), so "reaches" is checked with this slack.
EPSILON = 2e-6
ID_BATCH = 512


def entry_score(scores: list[float], top_k: int, threshold: float | None) -> float:
    """The least score a new keyword needs to enter a list: the K-th score of a full list, else
    the threshold (or -1: any eligible keyword enters a short list)."""
    if len(scores) >= top_k:
        return float(scores[top_k - 1])
    return -1.0 if threshold is None else float(threshold)


def passes_static_filter(options: LinkOptions, payload: Mapping[str, Any]) -> bool:
    """Whether a keyword passes ``keyword_filter`` (it can then enter some list)."""
    for name, wanted in options.keyword_filter.items():
        value = payload.get(name)
        if isinstance(wanted, list) and value not in wanted:
            return False
        if not isinstance(wanted, list) and value != wanted:
            return False
    return True


def _entrant_filter(options: LinkOptions, keyword: Mapping[str, Any]) -> list[models.Condition]:
    """Products a keyword may enter under ``match_fields``: a product with the field needs the
    keyword's value; a product without it has no condition (see product_link._filters)."""
    conditions: list[models.Condition] = []
    for name in options.match_fields:
        absent = models.IsEmptyCondition(is_empty=models.PayloadField(key=name))
        value = keyword.get(name)
        if value is None:
            conditions.append(models.Filter(must=[absent]))
        else:
            same = models.FieldCondition(key=name, match=models.MatchValue(value=value))
            conditions.append(models.Filter(should=[same, absent]))
    return conditions


def _batches(ids: list[str], size: int = ID_BATCH) -> Iterable[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def holders(
    qdrant: QdrantBase, product_collection: str, keyword_ids: list[str], retry: RetryPolicy
) -> set[str]:
    """Products whose stored list holds any of ``keyword_ids``."""
    found: set[str] = set()
    for batch in _batches(keyword_ids):
        query = models.Filter(
            must=[models.FieldCondition(key="keyword_ids", match=models.MatchAny(any=batch))]
        )
        for payload in points.scroll_matching(
            qdrant, product_collection, query, fields=["product_id"], retry=retry
        ):
            found.add(str(payload["product_id"]))
    return found


def _candidate_keywords(
    qdrant: QdrantBase, options: LinkOptions, collection: str, keyword_ids: list[str], retry: RetryPolicy
) -> Iterable[tuple[np.ndarray, dict[str, Any]]]:
    """(vector, payload) of each changed keyword still stored that passes ``keyword_filter``:
    the keywords that can enter some list."""
    for batch in _batches(keyword_ids):
        stored = points.retrieve(qdrant, collection, [point_id("keyword", i) for i in batch], retry=retry)
        for _, vector, payload in stored.values():
            if vector is not None and passes_static_filter(options, payload):
                yield vector, payload


def entrants(
    qdrant: QdrantBase,
    options: LinkOptions,
    collections: tuple[str, str],
    keyword_ids: list[str],
    retry: RetryPolicy,
) -> set[str]:
    """Products a new or changed keyword now enters (see the module docstring).
    ``collections`` = (keyword collection, product collection)."""
    keyword_collection, product_collection = collections
    found: set[str] = set()
    floors = [*BANDS, None]
    for vector, payload in _candidate_keywords(qdrant, options, keyword_collection, keyword_ids, retry):
        match = _entrant_filter(options, payload)
        for low, high in itertools.pairwise(floors):
            band = models.FieldCondition(key="entry_score", range=models.Range(gte=low, lt=high))
            for product, score in points.above(
                qdrant,
                product_collection,
                vector,
                low - EPSILON,
                models.Filter(must=[band, *match]),
                retry=retry,
            ):
                if score >= float(product["entry_score"]) - EPSILON:
                    found.add(str(product["product_id"]))
    return found


def entrants_by_scan(
    qdrant: QdrantBase,
    options: LinkOptions,
    collections: tuple[str, str],
    keyword_ids: list[str],
    retry: RetryPolicy,
    block: int = 4096,
) -> set[str]:
    """:func:`entrants` in one streamed pass over the product vectors (see the module docstring).
    Memory: the changed keywords' vectors and one block of products (block x changed scores)."""
    from embedding_pipeline.stores.qdrant.search import iter_vectors

    keyword_collection, product_collection = collections
    candidates = list(_candidate_keywords(qdrant, options, keyword_collection, keyword_ids, retry))
    if not candidates:
        return set()
    keywords = np.stack([vector for vector, _ in candidates])
    payloads = [payload for _, payload in candidates]
    fields = ["product_id", "entry_score", *options.match_fields]
    found: set[str] = set()
    for products, product_payloads in iter_vectors(qdrant, product_collection, block, fields, retry):
        scores = products @ keywords.T  # both L2-normalised by the cosine collections
        entry = np.asarray([float(p["entry_score"]) for p in product_payloads], dtype=np.float32)
        reaches = scores >= (entry - EPSILON)[:, None]
        for name in options.match_fields:
            mine = np.asarray([p.get(name) for p in product_payloads], dtype=object)
            theirs = np.asarray([k.get(name) for k in payloads], dtype=object)
            same = mine[:, None] == theirs[None, :]
            reaches &= same | np.equal(mine, None)[:, None]
        found.update(str(product_payloads[i]["product_id"]) for i in np.flatnonzero(reaches.any(axis=1)))
    return found


def _write_chunks(ids: list[str], run_dir: StoragePath, chunk_ids: int) -> list[dict[str, Any]]:
    """Relink work items for the mapped link task: bounded id lists in Parquet files."""
    chunks = []
    for number, start in enumerate(range(0, len(ids), chunk_ids)):
        name = f"relink-{number:04d}"
        path = write_parquet(
            run_dir / "relink" / f"{name}.parquet", pa.table({"id": ids[start : start + chunk_ids]})
        )
        chunks.append({"chunk": name, "relink": path, "staged": None})
    return chunks


def plan_relinks(
    qdrant: QdrantBase,
    options: LinkOptions,
    collections: tuple[str, str],
    state: IndexState,
    run_dir: StoragePath,
    *,
    relink_all: bool = False,
    scan: bool = True,
    retry: RetryPolicy = RetryPolicy(),
) -> dict[str, Any]:
    """Which stored products this run relinks, as relink chunks, and the change-log position the
    product state records once the run commits. ``collections`` = (keyword, product); ``scan``:
    find entrants by :func:`entrants_by_scan` (local mode) rather than band searches (a server)."""
    keyword_collection, product_collection = collections
    keyword_log = ChangeLog(state.settings, keyword_collection)
    recorded = state.metadata()
    applied_collection, _, applied_number = recorded.get("keyword_changes", "").partition("#")
    how = json.dumps(options.link_record(""), sort_keys=True)  # the options a list depends on
    result: dict[str, Any] = {"relink_chunks": [], "relink_reason": None, "keyword_changes": 0}
    if not state.exists():  # no product linked yet: tonight's products are all new
        position = f"{keyword_collection}#{keyword_log.latest()}"
        return {**result, "state_metadata": {"keyword_changes": position, "link_options": how}}
    deleted: list[str] = []
    if relink_all or applied_collection != keyword_collection or recorded.get("link_options") != how:
        ids = sorted(state.live()["id"].to_pylist())
        if relink_all:
            reason = "relink=all"
        elif applied_collection != keyword_collection:
            reason = f"keyword generation {applied_collection or '?'} -> {keyword_collection}"
        else:
            reason = "link options changed"
        end = keyword_log.latest()
    else:
        changes, end = keyword_log.since(int(applied_number or 0))
        changed = changes["id"].to_pylist()
        live = changes.filter(pc.not_equal(changes["change"], "delete"))["id"].to_pylist()
        deleted = changes.filter(pc.equal(changes["change"], "delete"))["id"].to_pylist()
        if changed and options.link_mode != "dense":
            # A fused or lexical rank has no per-product score a new keyword must reach, and one
            # keyword changes BM25's statistics for every query: only relinking all is exact.
            ids = sorted(state.live()["id"].to_pylist())
            reason = f"{len(changed)} keyword changes under link_mode {options.link_mode}: all products"
        else:
            affected = holders(qdrant, product_collection, changed, retry)
            affected |= (entrants_by_scan if scan else entrants)(qdrant, options, collections, live, retry)
            ids = sorted(affected)
            reason = f"{len(changed)} keyword changes" if changed else None
        result["keyword_changes"] = len(changed)
    if deleted:
        result["deleted_keywords_path"] = write_parquet(
            run_dir / "relink" / "deleted_keywords.parquet", pa.table({"id": pa.array(deleted, pa.string())})
        )
    log.info("relinking %d stored products (%s)", len(ids), reason or "no keyword changes")
    return {
        **result,
        # Never more relink tasks than a mapped task may expand to: the chunks grow instead.
        "relink_chunks": _write_chunks(
            ids, run_dir, max(options.relink_chunk_ids, -(-len(ids) // MAX_MAP_LENGTH))
        ),
        "relink_planned": len(ids),
        "relink_reason": reason,
        # What the product state records at commit: the keyword changes its lists now reflect.
        "state_metadata": {"keyword_changes": f"{keyword_collection}#{end}", "link_options": how},
    }
