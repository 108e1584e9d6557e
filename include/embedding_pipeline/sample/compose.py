"""Composing one row's text (keywords, product names, descriptions) from one seeded ``random.Random``,
and the two tables' schemas and row composers."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedding_pipeline.sample.layout import (
    JA_OTHER_LANG_SHARE,
    NULL_BRAND_SHARE,
    NULL_CATEGORY_SHARE,
    NULL_DESCRIPTION_SHARE,
)
from embedding_pipeline.sample.vocabulary import Category, Vocabulary, vocabulary


def _pick(rng: random.Random, seq: Sequence[str]) -> str:
    """``rng.choice`` without relying on ``_randbelow``, whose algorithm Python may change between
    versions; ``random()`` is the one method whose sequence is guaranteed stable."""
    return seq[int(rng.random() * len(seq))]


def _pick_category(rng: random.Random, vocab: Vocabulary) -> Category:
    return vocab.categories[int(rng.random() * len(vocab.categories))]


KEYWORD_SHAPES: tuple[tuple[float, bool, int, bool], ...] = (
    # (weight, lead term, modifiers, intent): short shapes are rare so 1M queries stay mostly distinct,
    # as they are in real search logs past the head queries.
    (0.34, True, 1, True),
    (0.14, True, 1, False),
    (0.20, True, 0, True),
    (0.15, False, 1, True),
    (0.08, False, 2, True),
    (0.04, True, 2, False),
    (0.015, True, 2, True),
    (0.02, False, 0, True),
    (0.015, True, 0, False),
)
_SHAPE_CUMULATIVE = tuple(np.cumsum([shape[0] for shape in KEYWORD_SHAPES]).tolist())


def _keyword_shape(rng: random.Random) -> tuple[bool, int, bool]:
    u = rng.random() * _SHAPE_CUMULATIVE[-1]
    for bound, (_, lead, mods, intent) in zip(_SHAPE_CUMULATIVE, KEYWORD_SHAPES, strict=True):
        if u < bound:
            return lead, mods, intent
    return KEYWORD_SHAPES[-1][1:]


def _intent(rng: random.Random, vocab: Vocabulary, cat: Category) -> str:
    u = rng.random()
    if u < 0.35 and cat.intents:
        return _pick(rng, cat.intents)
    if u < 0.45:
        return _pick(rng, vocab.questions)
    return _pick(rng, vocab.intents)


def _modifier(rng: random.Random, vocab: Vocabulary, cat: Category) -> tuple[str, bool]:
    """A modifier and whether it is an attribute (English puts attributes before the head noun)."""
    u = rng.random()
    if u < 0.5:
        return _pick(rng, cat.attributes), True
    if u < 0.62:
        return _pick(rng, cat.sizes), False
    if u < 0.8:
        return _pick(rng, vocab.budgets), False
    return _pick(rng, vocab.targets), False


def _place(rng: random.Random, vocab: Vocabulary) -> str:
    return _pick(rng, vocab.areas if rng.random() < 0.45 else vocab.regions)


def compose_keyword(rng: random.Random, vocab: Vocabulary, cat: Category) -> tuple[str, str]:
    """A search-style query: a lead (place, quality, season, brand or audience), the category's head noun,
    modifiers (attribute, size, budget, audience) and an intent, in one of ``KEYWORD_SHAPES``, e.g.
    ``渋谷 焼肉 食べ放題`` or ``best noise cancelling wireless earbuds under $100``; and its head noun."""
    if vocab.lang == "en":
        return _compose_keyword_en(rng, vocab, cat)
    lead, n_mods, intent = _keyword_shape(rng)
    terms: list[str] = []
    if lead:
        if cat.places and rng.random() < 0.55:
            terms.append(_place(rng, vocab))
        else:
            pools = (vocab.qualities, vocab.seasons, cat.brands, vocab.targets)
            terms.append(_pick(rng, pools[int(rng.random() * len(pools))]))
    head = _pick(rng, cat.heads)
    terms.append(head)
    terms.extend(_modifier(rng, vocab, cat)[0] for _ in range(n_mods))
    if intent:
        terms.append(_intent(rng, vocab, cat))
    return " ".join(dict.fromkeys(terms)), head


def _compose_keyword_en(rng: random.Random, vocab: Vocabulary, cat: Category) -> tuple[str, str]:
    lead, n_mods, intent = _keyword_shape(rng)
    before: list[str] = []
    after: list[str] = []
    if lead:
        if cat.places and rng.random() < 0.5:
            place = _place(rng, vocab)
            if rng.random() < 0.4:
                before.append(place)
            else:
                after.append(f"{_pick(rng, ('in', 'near', 'in', 'around'))} {place}")
        else:
            pools = (vocab.prefix_intents, vocab.qualities, vocab.seasons, cat.brands)
            before.append(_pick(rng, pools[int(rng.random() * len(pools))]))
    middle: list[str] = []
    for _ in range(n_mods):
        text, is_attribute = _modifier(rng, vocab, cat)
        (middle if is_attribute else after).append(text)
    head = _pick(rng, cat.heads)
    terms = [*before, *middle, head, *after]
    if intent:
        terms.append(_intent(rng, vocab, cat))
    return " ".join(dict.fromkeys(terms)).lower(), head


def _model_number(rng: random.Random, vocab: Vocabulary) -> str:
    number = int(rng.random() * 9000) + 1000
    suffix = "" if rng.random() < 0.5 else _pick(rng, ("W", "B", "S", "X", "PRO", "Z"))
    return f"{_pick(rng, vocab.model_prefixes)}-{number}{suffix}"


def compose_product_name(
    rng: random.Random, vocab: Vocabulary, cat: Category, head: str, brand: str | None
) -> str:
    """An EC listing title: promo brackets, origin/qualities, the head noun, variants, a size or model
    number and the brand, e.g. ``【送料無料】国産 有機 緑茶 ティーバッグ 100包 | 茶匠園``."""
    en = vocab.lang == "en"
    promos = [_pick(rng, vocab.promos)] if rng.random() < 0.55 else []
    if promos and rng.random() < 0.3:
        promos.append(_pick(rng, vocab.promos))
    lead: list[str] = []
    brand_first = brand is not None and rng.random() < 0.3
    if brand is not None and brand_first:
        lead.append(brand)
    if cat.origin and rng.random() < 0.45:
        lead.append(_pick(rng, vocab.origins))
    elif cat.places and rng.random() < 0.6:
        lead.append(_pick(rng, vocab.regions))
    for _ in range(int(rng.random() * 2.6)):
        lead.append(_pick(rng, vocab.qualities))
    if en:
        lead = [w.title() if w.islower() else w for w in lead]
    details = [_pick(rng, cat.attributes) for _ in range(1 + int(rng.random() * 1.8))]
    if rng.random() < 0.8:
        details.append(_pick(rng, cat.sizes))
    if cat.model_numbers and rng.random() < 0.75:
        details.append(_model_number(rng, vocab))
    lead = list(dict.fromkeys(lead))
    details = [d for d in dict.fromkeys(details) if d not in lead]
    tail = f" | {brand}" if brand is not None and not brand_first else ""
    if en:
        title = " ".join([*lead, head]) + "".join(f", {d}" for d in details)
        return "".join(f"[{p}] " for p in dict.fromkeys(promos)) + title + tail
    return "".join(f"【{p}】" for p in dict.fromkeys(promos)) + " ".join([*lead, head, *details]) + tail


def compose_description(
    rng: random.Random, vocab: Vocabulary, cat: Category, head: str, brand: str | None
) -> str | None:
    """A two-or-three sentence blurb about the same item as the name, or None (many listings have
    no description)."""
    if rng.random() < NULL_DESCRIPTION_SHARE:
        return None
    slots = {
        "head": head,
        "origin": _pick(rng, vocab.origins if cat.origin else vocab.regions),
        "brand": brand or _pick(rng, cat.brands),
        "quality": _pick(rng, vocab.qualities),
        "attr": _pick(rng, cat.attributes),
        "attr2": _pick(rng, cat.attributes),
        "size": _pick(rng, cat.sizes),
        "season": _pick(rng, vocab.seasons),
    }
    parts = [_pick(rng, vocab.openers), _pick(rng, vocab.middles), _pick(rng, vocab.closers)]
    sep = "" if vocab.lang == "ja" else " "
    text = sep.join(p.format(**slots) for p in parts if p)
    return text[0].upper() + text[1:] if vocab.lang == "en" else text


KEYWORDS_SCHEMA = pa.schema(
    [
        pa.field("keyword_id", pa.int64(), nullable=False),
        pa.field("keyword", pa.string()),
        pa.field("category", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
PRODUCTS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.int64(), nullable=False),
        pa.field("product_name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

Rows = dict[str, list[Any]]
TRUTH_CATEGORY, TRUTH_HEAD = "_category", "_head"
"""What a composed row is about, kept beside its columns for the relevance labels (sample.labels)."""


@dataclass(frozen=True)
class TableSpec:
    """What differs between keywords and products: columns, and how one clean row is composed."""

    name: str
    schema: pa.Schema
    id_column: str
    text_column: str
    optional_column: str
    """Dropped in the ``missing_optional_column`` variant file."""
    compose: Callable[[random.Random, str, Rows], None]


def _compose_keyword_row(rng: random.Random, lang: str, rows: Rows) -> None:
    vocab = vocabulary(lang)
    cat = _pick_category(rng, vocab)
    row_lang = lang
    if lang == "ja" and rng.random() < JA_OTHER_LANG_SHARE:
        row_lang = "en"
    text, head = compose_keyword(rng, vocabulary(row_lang), vocabulary(row_lang).category(cat.key))
    rows["keyword"].append(text)
    rows[TRUTH_CATEGORY].append(cat.key)
    rows[TRUTH_HEAD].append(head)
    rows["category"].append(None if rng.random() < NULL_CATEGORY_SHARE else cat.label)
    rows["lang"].append(row_lang)


def _compose_product_row(rng: random.Random, lang: str, rows: Rows) -> None:
    vocab = vocabulary(lang)
    cat = _pick_category(rng, vocab)
    head = _pick(rng, cat.heads)
    brand = None if rng.random() < NULL_BRAND_SHARE else _pick(rng, cat.brands)
    rows["product_name"].append(compose_product_name(rng, vocab, cat, head, brand))
    rows[TRUTH_CATEGORY].append(cat.key)
    rows[TRUTH_HEAD].append(head)
    rows["description"].append(compose_description(rng, vocab, cat, head, brand))
    rows["category"].append(cat.label)
    rows["brand"].append(brand)


TABLE_SPECS: dict[str, TableSpec] = {
    "keywords": TableSpec(
        "keywords", KEYWORDS_SCHEMA, "keyword_id", "keyword", "category", _compose_keyword_row
    ),
    "products": TableSpec(
        "products", PRODUCTS_SCHEMA, "product_id", "product_name", "description", _compose_product_row
    ),
}
