"""The shape of a stage's points, passed to the store so that the store stays generic. Light (no
qdrant-client), so stage modules can declare their schema without importing the client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Payload fields the store itself writes on every point (see upsert), indexed in every collection.
STORE_PAYLOAD_INDEXES: Mapping[str, str] = {
    "dt": "keyword",
    "dt_version": "integer",  # the conditional upsert's filter (latest dt wins)
    "content_hash": "keyword",
    "model_version": "integer",
}


@dataclass(frozen=True)
class PointSchema:
    """What a stage's points look like.

    ``id_field`` and ``text_field`` name the payload fields that hold the business id and the
    embedded text; ``indexed_fields`` are payload fields the stage filters on (field -> Qdrant
    payload schema type, e.g. ``"keyword"``). Indexes are created before the first upload: on a
    server, indexing a filled collection is far slower.
    """

    id_field: str
    text_field: str
    indexed_fields: Mapping[str, str] = field(default_factory=dict)

    def payload_indexes(self) -> dict[str, str]:
        """Every payload index a collection of these points gets: the store's and the stage's."""
        return {**STORE_PAYLOAD_INDEXES, self.id_field: "keyword", **self.indexed_fields}
