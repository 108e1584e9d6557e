"""Where the commands get their clients: settings from the environment (as the DAGs fall back
to), with the services ``make demo`` left behind started for the duration of a command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import Elasticsearch
from qdrant_client.client_base import QdrantBase

from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stores.elasticsearch.client import open_es
from embedding_pipeline.stores.qdrant.client import open_client
from embedding_pipeline.stores.qdrant.settings import QdrantSettings

# A person waits on these commands: a down server should say so in seconds, not after the tasks'
# two-minute retry budget (EMBEDDING_SERVER_RETRY_DEADLINE_S still wins when set).
INTERACTIVE_RETRY_DEADLINE_S = 15.0


def interactive_server_settings(model: str | None = None, **overrides: Any) -> ServerSettings:
    """Server settings from the environment, with the interactive retry budget as the default."""
    settings = ServerSettings.from_env(retry_deadline_s=INTERACTIVE_RETRY_DEADLINE_S)
    return settings.with_overrides(model_name=model, **overrides)


class Services:
    """Where handlers get their clients: settings from the environment, as the DAGs fall back to.

    With nothing configured and nothing running (e.g. after ``make demo``), Elasticsearch (the
    emulator, on its persistent data) and the inference server are started for the duration of
    the command and stopped after it (:class:`LocalServices`); what they say goes to stderr so the
    output stays clean. Subclass (or wrap) to provide clients another way.
    """

    @contextmanager
    def elasticsearch(self) -> Iterator[Elasticsearch]:
        with local_services(need_es=True), open_es() as client:
            yield client

    @contextmanager
    def qdrant(self) -> Iterator[QdrantBase]:
        with open_client(QdrantSettings.from_env()) as client:
            yield client

    @contextmanager
    def embedding(self, model: str | None) -> Iterator[EmbeddingClient]:
        with local_services(need_server=True), EmbeddingClient(interactive_server_settings(model)) as client:
            yield client


def local_services(need_es: bool = False, need_server: bool = False) -> Any:
    from embedding_pipeline.local.services import LocalServices

    def note(line: str) -> None:
        print(f"({line})", file=sys.stderr, flush=True)

    return LocalServices(need_es=need_es, need_server=need_server, ports="free", report=note)
