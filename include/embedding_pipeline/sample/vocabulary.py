"""Vocabularies of the sample data: a shared category taxonomy per language, loaded from the JSON
files in ``words/`` (data, not code: edit them to change what the generator writes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.sample.layout import LANGS


@dataclass(frozen=True)
class Category:
    """One node of the shared taxonomy: keywords and products of a category share its head nouns,
    which is what makes a category filter meaningful when products are linked to keywords."""

    key: str
    label: str
    heads: tuple[str, ...]
    attributes: tuple[str, ...]
    sizes: tuple[str, ...]
    brands: tuple[str, ...]
    intents: tuple[str, ...] = ()
    places: bool = False
    origin: bool = False
    model_numbers: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """Everything one language needs to compose keywords, product names and descriptions."""

    lang: str
    categories: tuple[Category, ...]
    regions: tuple[str, ...]
    areas: tuple[str, ...]
    intents: tuple[str, ...]
    qualities: tuple[str, ...]
    seasons: tuple[str, ...]
    promos: tuple[str, ...]
    origins: tuple[str, ...]
    model_prefixes: tuple[str, ...]
    openers: tuple[str, ...]
    middles: tuple[str, ...]
    closers: tuple[str, ...]
    targets: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    prefix_intents: tuple[str, ...] = ()

    def category(self, key: str) -> Category:
        return next(c for c in self.categories if c.key == key)


def _tuples(fields: dict) -> dict:
    return {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}


@cache
def vocabulary(lang: str) -> Vocabulary:
    """The vocabulary of one language (read once; tests read it to check category consistency)."""
    if lang not in LANGS:
        raise ConfigError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
    data = json.loads(resources.files(__package__).joinpath("words", f"{lang}.json").read_text("utf-8"))
    categories = tuple(Category(**_tuples(c)) for c in data.pop("categories"))
    return Vocabulary(lang=lang, categories=categories, **_tuples(data))
