"""The sample dataset's fixed layout: table and language names, id ranges, sizes, the manifest name.
Constants on purpose: changing one changes every generated file."""

from __future__ import annotations

from datetime import date

TABLES = ("keywords", "products")
LANGS = ("ja", "en")
MANIFEST_NAME = "_injected.json"
MANIFEST_FORMAT = "embedding_pipeline.sample_data/1"

ID_STRIDE = 1_000_000_000
"""Ids of one partition live in ``[days * ID_STRIDE + 1, (days + 1) * ID_STRIDE)``."""
BAD_FILE_ID_OFFSET = ID_STRIDE - 1_000
"""Rows of ``--bad-files`` files take positions from here, so they never collide with data rows."""
MAX_ROWS_PER_PARTITION = 100_000_000
GEN_BLOCK = 4096
"""Rows composed per seeded RNG; a constant so layout options never shift the random streams."""
LONG_TEXT_CHARS = 5000
BAD_FILE_ROWS = 10
DEFAULT_ROW_GROUP_SIZE = 10_000
COMPRESSION = "zstd"
MIN_DATE = date(2000, 1, 1)
MAX_DATE = date(2099, 12, 31)
EPOCH = date(1970, 1, 1)
DAY_US = 86_400_000_000
JA_OTHER_LANG_SHARE = 0.04
"""Share of English queries in Japanese mode: real Japanese search logs carry some, and it gives
the ``lang`` column something to say."""
NULL_CATEGORY_SHARE = 0.08
NULL_BRAND_SHARE = 0.12
NULL_DESCRIPTION_SHARE = 0.2
