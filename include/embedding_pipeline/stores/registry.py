"""Which adapter serves each store system, and opening the stores a task needs.

A third store is one more line here and an adapter module with ``default_settings()`` (its
settings type, from the environment) and ``open_store(settings)`` yielding a
:class:`~embedding_pipeline.stores.protocol.GenerationStore`: nothing in the generations
lifecycle changes."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.stores.protocol import Stores

ADAPTERS = {
    "qdrant": "embedding_pipeline.stores.qdrant.adapter",
    "es": "embedding_pipeline.stores.elasticsearch.adapter",
}
SYSTEMS = tuple(ADAPTERS)

StoreSettings = Mapping[str, Any]  # system -> that store's settings (absent or None: the environment)


def settings_of(settings: StoreSettings | None, system: str) -> Any:
    """One store's settings: the ones given, else resolved from the environment by its adapter
    (``default_settings``) - the one place a missing setting falls back to the environment."""
    if settings is not None and not isinstance(settings, Mapping):
        raise ConfigError(
            f"store settings are a mapping of store system to settings ({', '.join(SYSTEMS)}), "
            f"got {type(settings).__name__}"
        )
    given = (settings or {}).get(system)
    if given is not None:
        return given
    if system not in ADAPTERS:
        raise ConfigError(f"no store adapter for {system!r} (known: {', '.join(SYSTEMS)})")
    return importlib.import_module(ADAPTERS[system]).default_settings()


@contextmanager
def open_stores(settings: StoreSettings | None = None, systems: Iterable[str] = SYSTEMS) -> Iterator[Stores]:
    """:class:`Stores` over the ``systems`` a task uses (a keyword run that writes one store opens
    only that one: opening local-mode Qdrant costs seconds), each closed after."""
    with ExitStack() as stack:
        adapters = {}
        for system in dict.fromkeys(systems):
            resolved = settings_of(settings, system)
            module = importlib.import_module(ADAPTERS[system])
            adapters[system] = stack.enter_context(module.open_store(resolved))
        yield Stores(adapters)
