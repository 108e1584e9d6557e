"""Generations of a collection: ``<alias>-g<N>`` beside each other, one alias moved between them in
one request, bulk-load settings while a new one fills, and dropping one no alias points at.

A full rebuild builds the next generation without touching the alias, gates it, then moves the
alias with delete + create in a single ``update_collection_aliases`` call: Qdrant applies the
operations of one call atomically, so a reader resolving the alias gets the old collection or
the new one, never neither.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.stores.qdrant.collections import METADATA_KEY, resolve_alias
from embedding_pipeline.stores.qdrant.errors import QdrantSinkError
from embedding_pipeline.stores.qdrant.points import call

log = logging.getLogger(__name__)


def list_generations(client: QdrantBase, alias: str) -> dict[int, str]:
    """Generation number -> physical collection, for every ``<alias>-g<N>`` that exists."""
    pattern = re.compile(rf"^{re.escape(alias)}-g(\d+)$")
    found = {}
    for collection in client.get_collections().collections:
        match = pattern.match(collection.name)
        if match:
            found[int(match.group(1))] = collection.name
    return dict(sorted(found.items()))


def swap_alias(
    client: QdrantBase, alias: str, collection: str, retry: RetryPolicy = RetryPolicy()
) -> str | None:
    """Point ``alias`` at ``collection`` in one request; the collection it pointed at before (None
    when it did not exist). Retried on transient errors; a request Qdrant refused changed nothing."""
    previous = resolve_alias(client, alias)
    if previous == collection:
        return previous
    operations: list[models.AliasOperations] = []
    if previous is not None:
        if previous == alias:
            raise QdrantSinkError(
                f"{alias!r} is a collection, not an alias: an alias cannot take its name. Re-create it "
                f"as {alias}-g1 with alias {alias!r} first"
            )
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    operations.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
        )
    )
    call(
        retry,
        f"moving alias {alias!r} from {previous} to {collection}",
        lambda: client.update_collection_aliases(change_aliases_operations=operations),
    )
    log.info("Qdrant alias %s: %s -> %s", alias, previous, collection)
    return previous


def remove_alias(client: QdrantBase, alias: str, retry: RetryPolicy = RetryPolicy()) -> None:
    """Delete ``alias`` (undoing a swap that created it)."""
    operation = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
    call(retry, f"removing alias {alias!r}", lambda: client.update_collection_aliases([operation]))


def drop_collection(client: QdrantBase, alias: str, collection: str) -> None:
    """Delete an old generation; refused while ``alias`` points at it."""
    if resolve_alias(client, alias) == collection:
        raise QdrantSinkError(f"refusing to drop {collection!r}: alias {alias!r} points at it")
    client.delete_collection(collection)
    log.info("dropped Qdrant collection %s", collection)


def begin_bulk_load(client: QdrantBase, collection: str) -> int | None:
    """Defer HNSW indexing while a new generation fills (indexing threshold 0); the previous
    threshold, for :func:`end_bulk_load`. Indexing one graph at the end is cheaper than growing
    it point by point; local mode has no index and accepts the setting unchanged."""
    previous = client.get_collection(collection).config.optimizer_config.indexing_threshold
    client.update_collection(collection, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0))
    return previous or None  # 0: a retried task reading its own deferral; restore the default then


def end_bulk_load(client: QdrantBase, collection: str, previous: int | None, wait_s: float = 600.0) -> None:
    """Restore the indexing threshold :func:`begin_bulk_load` replaced and wait (up to ``wait_s``)
    for the server to build the HNSW graph, so the gate's searches run the way readers' will.
    Searches stay exact on segments not yet indexed, so a slow optimizer delays, never breaks."""
    threshold = 20_000 if previous is None else previous  # Qdrant's default (KB)
    client.update_collection(
        collection, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=threshold)
    )
    deadline = time.monotonic() + wait_s
    while client.get_collection(collection).status != models.CollectionStatus.GREEN:
        if time.monotonic() >= deadline:
            log.warning("%s still optimizing after %.0f s; gating it anyway", collection, wait_s)
            return
        time.sleep(1.0)


def generation_record(client: QdrantBase, collection: str) -> dict[str, Any]:
    """What the pipeline recorded in the collection's metadata: model, dim, and ``promoted_at``
    once an alias has pointed at it (a generation that never served is not a rollback target)."""
    info = client.get_collection(collection)
    record = dict((info.config.metadata or {}).get(METADATA_KEY) or {})
    record.setdefault("dim", info.config.params.vectors.size)
    return record


def mark_promoted(client: QdrantBase, collection: str, when: str) -> None:
    """Record that an alias pointed at ``collection`` (kept from the first time)."""
    record = generation_record(client, collection)
    if not record.get("promoted_at"):
        record["promoted_at"] = when
        client.update_collection(collection, metadata={METADATA_KEY: record})
