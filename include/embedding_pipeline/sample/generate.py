"""Deterministic sample data: keywords and products as hive-partitioned Parquet, with optional defects.

Why it exists: the pipeline must be exercised at realistic sizes (1k..1M rows), on text that looks like
the original tool's data (Japanese search keywords, EC product names), and against bad input whose
every defect is known in advance, so the accounting (``rows_in == indexed + dead_lettered``) can be
checked row by row instead of trusted.

Layout under ``out_root``::

    keywords/dt=2024-01-01/part-00000.parquet        clean rows + in-place defects, several row groups
    keywords/dt=2024-01-01/part-wrongtype-00000.parquet   rows whose text column is int64  (--bad-rate)
    keywords/dt=2024-01-01/part-extracolumn-00000.parquet rows with one extra column         (--bad-rate)
    keywords/dt=2024-01-01/part-missingcol-00000.parquet  rows without the optional column   (--bad-rate)
    keywords/dt=2024-01-01/part-empty.parquet, part-badschema-*.parquet, part-garbage.parquet (--bad-files)
    keywords/_injected.json                           the manifest of every injected defect
    products/...                                      the same for products

The manifest starts with ``_`` so ``pyarrow.dataset`` discovery ignores it, as it ignores the ``.``-prefixed
temporary directories a partition is written into before it is swapped in.

Determinism: a row's content is a pure function of (seed, table, lang, dt, position). Text comes from a
``random.Random`` seeded per block of ``GEN_BLOCK`` rows (only ``random()`` is used: its sequence is the one
the standard library promises to keep across Python versions); defects come from a counter-based hash of
the position. So row-group size, rows per file, the other dates in the run and the order they are written
in never change a partition's rows, and the same arguments give byte-identical files (with the same
pyarrow version, which is recorded in each file's ``created_by``).

Ids are ``days_since_epoch(dt) * ID_STRIDE + position + 1``: unique across partitions without knowing the
other partitions, identical when one partition is regenerated alone.

Memory: rows are composed one block at a time and written one row group at a time; only the manifest
(one entry per injected defect, about ``rows * bad_rate``) grows with the data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding_pipeline.errors import ConfigError

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


# --------------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    """Vocabulary lists are written ``a|b|c`` so entries may contain spaces (``Bluetooth 5.3``)."""
    return tuple(w.strip() for w in text.split("|") if w.strip())


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


def _ja_categories() -> tuple[Category, ...]:
    return (
        Category(
            "food",
            "食品",
            _words(
                "ラーメン|寿司|焼肉|カレー|たこ焼き|もつ鍋|うどん|そば|餃子|海鮮丼|お好み焼き|ジンギスカン|牛タン|"
                "和牛|うなぎ|明太子|かに|ホタテ|いくら|馬刺し|梅干し|味噌|醤油|チーズケーキ|どら焼き|羊羹|"
                "せんべい|いちご|メロン|みかん|りんご|お米|食パン|ハンバーグ|唐揚げ|天ぷら|しゃぶしゃぶ|すき焼き|"
                "焼き鳥|牡蠣|ちゃんぽん|ひつまぶし"
            ),
            _words(
                "豚骨|味噌味|塩味|醤油味|激辛|食べ比べ|詰め合わせ|本格|手作り|炭火焼き|黒毛|A5ランク|切り落とし|"
                "冷凍|小分け|贈答用|家庭用|大盛り|ご当地|名物|お徳用|化粧箱入り|個包装|特大|生食用|骨なし|"
                "有機|無添加|減農薬|天然|産地直送"
            ),
            _words(
                "500g|1kg|2kg|300g×3パック|2〜3人前|4人前|10食入り|12個入り|5kg|10kg|24袋|800g|6枚入り|"
                "20本入り|3箱セット"
            ),
            _words(
                "ほっかい菓子舗|北の恵み市場|さくら食品|山田農園|博多屋|海鮮問屋 丸八|"
                "京の老舗 和心|信州そば工房|みちのく堂|南国フルーツ園"
            ),
            _words(
                "食べ放題|ランチ|ディナー|テイクアウト|名店|老舗|行列|取り寄せ|お土産|デリバリー|個室|深夜営業|"
                "子連れ|一人|駅近|予約|ミシュラン|有名店|安くて美味しい"
            ),
            places=True,
            origin=True,
        ),
        Category(
            "drinks",
            "ドリンク・お酒",
            _words(
                "緑茶|抹茶|ほうじ茶|麦茶|紅茶|コーヒー豆|ドリップコーヒー|日本酒|焼酎|ビール|クラフトビール|"
                "ワイン|梅酒|ウイスキー|ミネラルウォーター|炭酸水|野菜ジュース|甘酒|青汁|プロテイン"
            ),
            _words(
                "ティーバッグ|粉末|無糖|微糖|深煎り|浅煎り|純米大吟醸|辛口|甘口|飲み比べセット|水出し|"
                "カフェインレス|強炭酸|天然水|徳用|ペットボトル|缶|瓶|ギフトセット|ホエイ|チョコ風味|"
                "有機|無添加"
            ),
            _words("500ml×24本|1.8L|720ml|350ml×24缶|2L×6本|100包|50袋|1kg|200g|3本セット|30杯分|1ケース"),
            _words("茶匠園|蔵元 ひさご|ミナミ珈琲|天然水工房|麦の郷|青葉ファーム|ながれ酒造"),
            _words("定期便|ケース買い|飲み比べ|蔵元|直送"),
            places=True,
            origin=True,
        ),
        Category(
            "appliances",
            "家電",
            _words(
                "炊飯器|電子レンジ|オーブンレンジ|掃除機|ロボット掃除機|空気清浄機|加湿器|除湿機|洗濯機|"
                "ドラム式洗濯機|冷蔵庫|ドライヤー|電気ケトル|トースター|ホットプレート|電気毛布|扇風機|"
                "サーキュレーター|エアコン|食洗機|ヘアアイロン|電動歯ブラシ|シェーバー"
            ),
            _words(
                "一人暮らし|省エネ|コードレス|静音|大容量|小型|軽量|タイマー付き|IH|圧力IH|スチーム|自動|"
                "温度調節|人感センサー|Wi-Fi対応|抗菌|折りたたみ|2024年モデル|ホワイト|ブラック|節電|強力吸引"
            ),
            _words("5.5合|3合|1200W|10L|20L|26L|6畳|14畳|1.0L|450L|8kg|10kg|1.2L"),
            _words("ミナト電機|ヒカリ家電|TOKAI|NIKKO電器|アサヒライフ|YAMAKAZE"),
            _words("型落ち|アウトレット|中古|口コミ 評価|電気代|家電量販店|延長保証"),
            model_numbers=True,
        ),
        Category(
            "electronics",
            "PC・スマホ・オーディオ",
            _words(
                "ワイヤレスイヤホン|ヘッドホン|スピーカー|ノートパソコン|タブレット|スマートウォッチ|"
                "モバイルバッテリー|モニター|キーボード|マウス|充電器|スマホケース|USBメモリ|外付けSSD|"
                "Webカメラ|無線LANルーター|ドライブレコーダー|プロジェクター|デジタルカメラ"
            ),
            _words(
                "ノイズキャンセリング|Bluetooth 5.3|防水|急速充電|有線|無線|4K|ゲーミング|薄型|軽量|大容量|"
                "高音質|骨伝導|外部音取り込み|マイク付き|日本語配列|USB-C|メモリ16GB|IPS|144Hz|"
                "MagSafe対応|ワイヤレス充電"
            ),
            _words("16インチ|14インチ|27インチ|20000mAh|10000mAh|1TB|512GB|64GB|65W|2m|13.3インチ|256GB"),
            _words("KUMO|Hinata Audio|Zenitech|ソラテック|NovaLink|ORBIT"),
            _words("型落ち|中古|iPhone対応|レビュー|スペック|比較 2024"),
            model_numbers=True,
        ),
        Category(
            "fashion",
            "ファッション",
            _words(
                "スニーカー|ダウンジャケット|ワンピース|Tシャツ|パーカー|デニムパンツ|スラックス|リュック|"
                "トートバッグ|腕時計|長財布|ブーツ|サンダル|キャップ|マフラー|手袋|トレンチコート|カーディガン|"
                "ニット|浴衣|水着|パジャマ"
            ),
            _words(
                "メンズ|レディース|キッズ|大きいサイズ|撥水|厚底|本革|綿100%|オーバーサイズ|韓国風|通勤|無地|"
                "ストライプ|黒|白|ネイビー|ベージュ|洗える|ストレッチ|速乾|ゆったり|細身"
            ),
            _words("26.5cm|24.0cm|27.0cm|Sサイズ|Mサイズ|Lサイズ|XL|3L|フリーサイズ|28L"),
            _words("URBAN FOX|はるいろ|MIYABI|NORTH BASE|Koti|みなも"),
            _words("コーデ|新作|アウトレット|プチプラ|福袋|古着"),
        ),
        Category(
            "beauty",
            "コスメ・美容",
            _words(
                "化粧水|乳液|美容液|日焼け止め|ファンデーション|洗顔フォーム|クレンジング|シャンプー|"
                "トリートメント|ハンドクリーム|リップ|マスカラ|アイシャドウ|香水|ボディソープ|"
                "オールインワンジェル|シートマスク"
            ),
            _words(
                "敏感肌|乾燥肌|脂性肌|無添加|オーガニック|SPF50+|保湿|美白|毛穴|エイジングケア|ノンシリコン|"
                "プチプラ|デパコス|詰め替え|医薬部外品|低刺激|ウォータープルーフ|メンズ|韓国コスメ|ニキビ"
            ),
            _words("200ml|500ml|30g|50ml|120ml|30枚入|1000ml|2本セット"),
            _words("ナチュレ美研|HADA LAB|桜コスメ|AQUA BLANC|しろゆり|LUMINA"),
            _words("ドラッグストア|使い方|成分|40代|20代|ランキング 2024"),
        ),
        Category(
            "travel",
            "旅行・ホテル",
            _words(
                "ホテル|温泉旅館|旅館|民宿|ペンション|グランピング|宿泊券|ツアー|日帰り温泉|スーツケース|"
                "キャリーケース|ネックピロー|旅行バッグ"
            ),
            _words(
                "露天風呂付き|素泊まり|朝食付き|1泊2食付き|ペア宿泊券|カップル|オーシャンビュー|機内持ち込み|"
                "軽量|大容量|ペット可|貸切風呂|当日予約|ファミリー|バリアフリー"
            ),
            _words("2名様|1室|Sサイズ|Mサイズ|40L|60L|90L|1泊分"),
            _words("旅ギフト|Travelix|ゆったり宿|KABAN|たびのわ"),
            _words("予約|格安|当日|空室|キャンセル|口コミ|高級|安い|駅近|温泉付き|連泊"),
            places=True,
        ),
        Category(
            "interior",
            "インテリア・家具",
            _words(
                "ソファ|ベッド|マットレス|布団|枕|カーテン|ラグ|収納ボックス|デスク|本棚|ダイニングテーブル|"
                "チェア|ゲーミングチェア|シーリングライト|こたつ|座椅子|ソファベッド"
            ),
            _words(
                "一人暮らし|北欧|折りたたみ|低反発|高反発|防炎|遮光|洗える|木製|組み立て簡単|省スペース|"
                "ひのき|脚付き|2人掛け|電動|昇降|リクライニング|ウォールナット"
            ),
            _words("シングル|セミダブル|ダブル|幅120cm|100×200cm|3段|6畳|幅90cm"),
            _words("木の家具工房|NORDIC ROOM|ねむり屋|HOME+|くらし蔵"),
            _words("おしゃれ|配置|レイアウト|アウトレット|組み立て"),
        ),
        Category(
            "outdoor",
            "スポーツ・アウトドア",
            _words(
                "テント|寝袋|タープ|アウトドアチェア|クーラーボックス|ランニングシューズ|ヨガマット|ダンベル|"
                "ゴルフボール|ゴルフクラブ|クロスバイク|登山靴|トレッキングポール|バーベキューコンロ|焚き火台|"
                "ランタン|釣り竿"
            ),
            _words(
                "ソロ|ファミリー|軽量|防水|コンパクト|初心者|上級者|ワンタッチ|4人用|2人用|折りたたみ|"
                "電動アシスト|冬用|夏用|厚手|可変式|LED|ステンレス"
            ),
            _words("10kg|20kg|6mm|1ダース|26インチ|35L|50L|3人用"),
            _words("PEAK TRAIL|山と風|SOLO CAMP|RUNWAY|ナミノリ"),
            _words("キャンプ場|レンタル|セール|中古|初心者 セット"),
        ),
        Category(
            "kitchen",
            "キッチン用品",
            _words(
                "フライパン|包丁|両手鍋|土鍋|弁当箱|水筒|タンブラー|まな板|保存容器|食器セット|マグカップ|"
                "圧力鍋|ホットサンドメーカー|急須|お箸"
            ),
            _words(
                "IH対応|ガス火対応|取っ手が取れる|ステンレス|鉄|セラミック|食洗機対応|保温|保冷|真空断熱|"
                "電子レンジ対応|日本製|有田焼|南部鉄器|燕三条|抗菌|こびりつかない"
            ),
            _words("26cm|20cm|500ml|1L|3.5L|5点セット|2段|800ml"),
            _words("燕三条工房|KITCHEN PRO|有田窯|ミズホ|かまど屋"),
            _words("使い方|お手入れ|寿命|100均"),
        ),
        Category(
            "baby",
            "ベビー・キッズ",
            _words(
                "おむつ|おしりふき|ベビーカー|抱っこ紐|チャイルドシート|知育玩具|絵本|ランドセル|粉ミルク|"
                "離乳食|ベビー服|ベビーベッド|ベビーモニター"
            ),
            _words(
                "新生児|1歳|2歳|3歳|男の子|女の子|軽量|A型|B型|ISOFIX|出産祝い|日本製|オーガニックコットン|"
                "通気性|テープ|パンツ"
            ),
            _words("Mサイズ 64枚|Lサイズ 54枚|80枚×12個|800g|70cm|80cm|90cm"),
            _words("すくすく|Baby Leaf|ぽかぽか|こもれび|KIDS LAB"),
            _words("いつから|選び方|お下がり|レンタル|比較"),
        ),
        Category(
            "pet",
            "ペット用品",
            _words(
                "ドッグフード|キャットフード|猫砂|ペットシーツ|首輪|リード|キャットタワー|ペットキャリー|"
                "犬用おやつ|猫用おやつ|ペットベッド|爪とぎ|自動給餌器"
            ),
            _words(
                "小型犬|中型犬|大型犬|子猫|成猫|シニア|グレインフリー|無添加|国産|消臭|固まる|流せる|厚型|"
                "薄型|ワイド|レギュラー"
            ),
            _words("2kg|7kg|10L|100枚|200枚|1.5kg×6袋|6.5L×4袋"),
            _words("わんにゃん堂|PAW & CO|にゃんこ日和|しっぽ屋|ドギーライフ"),
            _words("獣医|評判|食いつき|定期便|安全"),
        ),
    )


def _en_categories() -> tuple[Category, ...]:
    return (
        Category(
            "food",
            "Food",
            _words(
                "Ramen|Sushi|Yakiniku|Curry|Takoyaki|Motsunabe|Udon|Soba|Gyoza|Poke Bowl|Okonomiyaki|Pizza|"
                "Burger|Tacos|Wagyu Beef|Grilled Eel|Snow Crab|Scallops|Salmon Roe|Mochi|Miso|Soy Sauce|"
                "Cheesecake|Strawberries|Melon|Mandarin Oranges|Apples|Rice|Sourdough Bread|Fried Chicken|"
                "Tempura|Shabu Shabu|Sukiyaki|Yakitori|Oysters|Dumplings|Bagels|Barbecue Ribs"
            ),
            _words(
                "Tonkotsu|Spicy|Extra Spicy|Sampler|Assorted|Authentic|Homemade|Charcoal Grilled|A5 Grade|"
                "Frozen|Individually Wrapped|Gift Boxed|Family Size|"
                "Local Specialty|Value Pack|Boneless|Vegan|"
                "Gluten Free|Low Sodium|Hand Made|Smoked|Sliced|Organic|Fresh|All Natural"
            ),
            _words("500 g|1 kg|2 kg|3 x 300 g|Serves 2-3|Serves 4|10 Servings|12 Count|5 kg|10 lb|24 Pack"),
            _words("Northern Harvest|Sakura Foods|Yamada Farm|Harbor Fish Co|Old Town Kitchen|Sunny Orchard"),
            _words(
                "all you can eat|lunch|dinner|takeout|delivery|open now|late night|reservation|"
                "private room|michelin|food tour|near station|happy hour"
            ),
            places=True,
            origin=True,
        ),
        Category(
            "drinks",
            "Drinks",
            _words(
                "Green Tea|Matcha|Hojicha|Barley Tea|Black Tea|Coffee Beans|Drip Coffee|Sake|Shochu|Beer|"
                "Craft Beer|Wine|Plum Wine|Whisky|Mineral Water|Sparkling Water|Vegetable Juice|Kombucha|"
                "Protein Powder|Cold Brew"
            ),
            _words(
                "Tea Bags|Powdered|Unsweetened|Lightly Sweetened|Dark Roast|Light Roast|Junmai Daiginjo|Dry|"
                "Sweet|Tasting Set|Decaf|Extra Sparkling|Natural Spring|Bulk|Gift Set|Whey|Chocolate Flavor|"
                "Organic"
            ),
            _words("24 x 500 ml|1.8 L|720 ml|24 x 12 oz|6 x 2 L|100 Count|50 Bags|1 kg|200 g|3 Bottles"),
            _words("Tea Master Garden|Hisago Brewery|South Roasters|Spring Works|Barley Field Co"),
            _words("subscription|by the case|tasting|brewery tour|wholesale"),
            places=True,
            origin=True,
        ),
        Category(
            "appliances",
            "Home Appliances",
            _words(
                "Rice Cooker|Microwave|Convection Oven|Vacuum Cleaner|Robot Vacuum|Air Purifier|Humidifier|"
                "Dehumidifier|Washing Machine|Front Load Washer|Refrigerator|"
                "Hair Dryer|Electric Kettle|Toaster|"
                "Griddle|Electric Blanket|Electric Fan|Air Circulator|"
                "Air Conditioner|Dishwasher|Hair Straightener|"
                "Electric Toothbrush|Electric Shaver"
            ),
            _words(
                "Compact|Energy Saving|Cordless|Quiet|Large Capacity|Small|Lightweight|Timer|Induction|"
                "Pressure Induction|Steam|Automatic|Temperature Control|Motion Sensor|Wi-Fi|Antibacterial|"
                "Foldable|2024 Model|White|Black|Powerful Suction"
            ),
            _words("5.5 Cup|3 Cup|1200 W|10 L|20 L|1.1 cu ft|300 sq ft|1.0 L|16 cu ft|18 lb|1.2 L"),
            _words("Minato Electric|Hikari Home|TOKAI|Nikko Appliance|Asahi Life|YAMAKAZE"),
            _words("refurbished|open box|energy cost|extended warranty|in store"),
            model_numbers=True,
        ),
        Category(
            "electronics",
            "Electronics",
            _words(
                "Wireless Earbuds|Headphones|Bluetooth Speaker|Laptop|Tablet|Smartwatch|Power Bank|Monitor|"
                "Keyboard|Mouse|Charger|Phone Case|USB Flash Drive|External SSD|Webcam|Wi-Fi Router|Dash Cam|"
                "Projector|Digital Camera"
            ),
            _words(
                "Noise Cancelling|Bluetooth 5.3|Waterproof|Fast Charging|Wired|Wireless|4K|Gaming|Slim|"
                "Lightweight|High Capacity|Hi-Res Audio|Bone Conduction|Transparency Mode|With Microphone|"
                "Mechanical|USB-C|16GB RAM|IPS|144Hz|MagSafe Compatible|Wireless Charging"
            ),
            _words(
                "16 inch|14 inch|27 inch|20000 mAh|10000 mAh|1 TB|512 GB|64 GB|65 W|6 ft|13.3 inch|256 GB"
            ),
            _words("KUMO|Hinata Audio|Zenitech|Solatec|NovaLink|ORBIT"),
            _words("refurbished|specs|vs|for iphone|for android|benchmark"),
            model_numbers=True,
        ),
        Category(
            "fashion",
            "Fashion",
            _words(
                "Sneakers|Down Jacket|Dress|T-Shirt|Hoodie|Jeans|Chinos|Backpack|Tote Bag|Watch|Wallet|Boots|"
                "Sandals|Baseball Cap|Scarf|Gloves|Trench Coat|Cardigan|Sweater|Yukata|Swimsuit|Pajamas"
            ),
            _words(
                "Mens|Womens|Kids|Plus Size|Water Repellent|Platform|Genuine Leather|100% Cotton|Oversized|"
                "Korean Style|Office|Plain|Striped|Black|White|Navy|Beige|Machine Washable|Stretch|Quick Dry|"
                "Relaxed Fit|Slim Fit"
            ),
            _words("US 9|US 7|US 10|Small|Medium|Large|XL|XXL|One Size|28 L"),
            _words("URBAN FOX|Haruiro|MIYABI|NORTH BASE|Koti|Minamo"),
            _words("outfit|new arrivals|outlet|clearance|lookbook|vintage"),
        ),
        Category(
            "beauty",
            "Beauty",
            _words(
                "Toner|Lotion|Serum|Sunscreen|Foundation|Face Wash|Cleansing Oil|Shampoo|Conditioner|"
                "Hand Cream|Lip Balm|Mascara|Eyeshadow Palette|Perfume|Body Wash|All-in-One Gel|Sheet Mask"
            ),
            _words(
                "Sensitive Skin|Dry Skin|Oily Skin|Fragrance Free|Organic|SPF 50+|Hydrating|Brightening|"
                "Pore Care|Anti Aging|Silicone Free|Drugstore|Luxury|"
                "Refill|Hypoallergenic|Waterproof|For Men|"
                "K-Beauty|Acne|Vegan"
            ),
            _words("200 ml|500 ml|30 g|50 ml|120 ml|30 Sheets|1000 ml|2 Pack"),
            _words("Nature Lab|HADA LAB|Sakura Cosmetics|AQUA BLANC|Shiroyuri|LUMINA"),
            _words("dupe|ingredients|routine|for 40s|dermatologist|how to use"),
        ),
        Category(
            "travel",
            "Travel",
            _words(
                "Hotel|Hot Spring Inn|Ryokan|Guesthouse|Bed and Breakfast|Glamping|Hotel Voucher|Tour|"
                "Day Spa|Suitcase|Carry-On Luggage|Travel Pillow|Duffel Bag"
            ),
            _words(
                "With Private Bath|Room Only|Breakfast Included|Half Board|For Two|Couples|Ocean View|"
                "Carry-On Size|Lightweight|Expandable|Pet Friendly|Private Onsen|Same Day|Family|Accessible"
            ),
            _words("2 Guests|1 Room|Small|Medium|40 L|60 L|90 L|1 Night"),
            _words("TripGift|Travelix|Slow Stay|KABAN|Tabinowa"),
            _words("booking|cheap|last minute|availability|cancellation|reviews|luxury|near station|deals"),
            places=True,
        ),
        Category(
            "interior",
            "Home & Furniture",
            _words(
                "Sofa|Bed Frame|Mattress|Futon|Pillow|Curtains|"
                "Area Rug|Storage Box|Desk|Bookshelf|Dining Table|"
                "Chair|Gaming Chair|Ceiling Light|Kotatsu Table|Floor Chair|Sofa Bed"
            ),
            _words(
                "Small Space|Scandinavian|Foldable|Memory Foam|"
                "High Density|Flame Retardant|Blackout|Washable|"
                "Solid Wood|Easy Assembly|Space Saving|Hinoki|With Legs|Loveseat|Electric|Adjustable Height|"
                "Reclining|Walnut"
            ),
            _words("Twin|Full|Queen|King|47 inch|39 x 79 in|3 Tier|35 inch"),
            _words("Wood Furniture Studio|NORDIC ROOM|Nemuriya|HOME+|Kurashi Works"),
            _words("ideas|layout|aesthetic|outlet|assembly"),
        ),
        Category(
            "outdoor",
            "Sports & Outdoors",
            _words(
                "Tent|Sleeping Bag|Tarp|Camping Chair|Cooler|"
                "Running Shoes|Yoga Mat|Dumbbells|Golf Balls|Golf Clubs|"
                "Hybrid Bike|Hiking Boots|Trekking Poles|BBQ Grill|Fire Pit|Lantern|Fishing Rod"
            ),
            _words(
                "Solo|Family|Ultralight|Waterproof|Compact|Beginner|"
                "Advanced|Instant|4 Person|2 Person|Foldable|"
                "E-Bike|Winter|Summer|Thick|Adjustable|LED|Stainless Steel"
            ),
            _words("10 kg|20 lb|6 mm|12 Pack|26 inch|35 L|50 L|3 Person"),
            _words("PEAK TRAIL|Yama to Kaze|SOLO CAMP|RUNWAY|Naminori"),
            _words("campground|rental|sale|used|starter kit"),
        ),
        Category(
            "kitchen",
            "Kitchen",
            _words(
                "Frying Pan|Chef Knife|Stock Pot|Donabe Pot|Bento Box|Water Bottle|Tumbler|Cutting Board|"
                "Food Storage Containers|Dinnerware Set|Mug|Pressure Cooker|Sandwich Maker|Teapot|Chopsticks"
            ),
            _words(
                "Induction Ready|Gas Compatible|Detachable Handle|Stainless Steel|Cast Iron|Ceramic|"
                "Dishwasher Safe|Insulated|Vacuum Insulated|Microwave Safe|"
                "Made in Japan|Arita Ware|Nambu Ironware|"
                "Tsubame Sanjo|Antibacterial|Nonstick"
            ),
            _words("26 cm|8 inch|17 oz|1 L|3.5 L|5 Piece Set|2 Tier|27 oz"),
            _words("Tsubame Works|KITCHEN PRO|Arita Kiln|Mizuho|Kamadoya"),
            _words("how to clean|care guide|lifespan|dupe"),
        ),
        Category(
            "baby",
            "Baby & Kids",
            _words(
                "Diapers|Baby Wipes|Stroller|Baby Carrier|"
                "Car Seat|Educational Toy|Picture Book|School Backpack|"
                "Baby Formula|Baby Food|Baby Clothes|Crib|Baby Monitor"
            ),
            _words(
                "Newborn|1 Year Old|2 Year Old|3 Year Old|Boys|Girls|Lightweight|Reversible|Compact|ISOFIX|"
                "Baby Shower Gift|Made in Japan|Organic Cotton|Breathable|Tape Style|Pull-Ups"
            ),
            _words("Size 2 64 Count|Size 3 54 Count|12 x 80 Count|28 oz|0-3 Months|6-12 Months|2T"),
            _words("Sukusuku|Baby Leaf|Pokapoka|Komorebi|KIDS LAB"),
            _words("when to start|how to choose|hand me down|rental|registry"),
        ),
        Category(
            "pet",
            "Pet Supplies",
            _words(
                "Dog Food|Cat Food|Cat Litter|Pee Pads|Dog Collar|"
                "Leash|Cat Tree|Pet Carrier|Dog Treats|Cat Treats|"
                "Pet Bed|Scratching Post|Automatic Feeder"
            ),
            _words(
                "Small Breed|Medium Breed|Large Breed|Kitten|Adult|"
                "Senior|Grain Free|No Additives|Made in USA|"
                "Odor Control|Clumping|Flushable|Extra Thick|Thin|Wide|Regular"
            ),
            _words("4 lb|15 lb|10 L|100 Count|200 Count|6 x 3 lb|4 x 6.5 L"),
            _words("Wan Nyan Do|PAW & CO|Kitty Days|Shippo|Doggy Life"),
            _words("vet recommended|reviews|picky eaters|subscription|safety"),
        ),
    )


def _ja_vocabulary() -> Vocabulary:
    return Vocabulary(
        lang="ja",
        categories=_ja_categories(),
        regions=_words(
            "北海道|青森|岩手|宮城|仙台|秋田|山形|福島|茨城|栃木|群馬|埼玉|千葉|東京|神奈川|横浜|新潟|富山|石川|"
            "金沢|福井|山梨|長野|岐阜|静岡|愛知|名古屋|三重|滋賀|京都|大阪|兵庫|神戸|奈良|和歌山|鳥取|島根|岡山|"
            "広島|山口|徳島|香川|愛媛|高知|福岡|博多|佐賀|長崎|熊本|大分|宮崎|鹿児島|沖縄|札幌|函館|小樽|箱根|"
            "熱海|軽井沢|日光|伊勢|別府|由布院|草津|石垣島|宮古島|鎌倉|伊豆|白浜"
        ),
        areas=_words(
            "渋谷|新宿|池袋|銀座|上野|浅草|秋葉原|六本木|恵比寿|品川|表参道|吉祥寺|中目黒|梅田|難波|心斎橋|"
            "天王寺|三宮|河原町|祇園|栄|天神|中洲|すすきの|国分町|那覇|国際通り|横浜中華街|みなとみらい|立川|"
            "町田|大宮|船橋|川崎|東京駅|新大阪|京都駅|名古屋駅|博多駅"
        ),
        intents=_words(
            "おすすめ|人気|安い|格安|通販|口コミ|ランキング|比較|評判|最安値|セール|激安|予約|公式|新作|選び方|"
            "値段|送料無料|ギフト|プレゼント|まとめ買い|店舗|近く|営業時間|クーポン|レビュー|在庫|楽天|"
            "amazon|ふるさと納税|お取り寄せ|コスパ"
        ),
        qualities=_words(
            "国産|高級|訳あり|限定|業務用|大容量|特選|厳選|手作り|老舗|新品|正規品|日本製|プレミアム|お試し|"
            "数量限定|人気No.1|当日発送|アウトレット"
        ),
        seasons=_words(
            "春|夏|秋|冬|春夏|秋冬|年末|お正月|母の日|父の日|敬老の日|お中元|お歳暮|クリスマス|バレンタイン|"
            "ホワイトデー|ハロウィン|新生活|入学祝い|梅雨|夏休み|ゴールデンウィーク|ブラックフライデー|"
            "2023|2024|2025|2024年|2025年"
        ),
        promos=_words(
            "送料無料|公式|ランキング1位|期間限定|訳あり|ポイント10倍|あす楽|数量限定|初回限定|"
            "クーポンで10%OFF|新商品|在庫処分|メーカー直送|正規品|ふるさと納税|1年保証|レビュー特典|"
            "最大50%OFF|母の日ギフト|お歳暮"
        ),
        origins=_words(
            "北海道産|青森県産|秋田県産|山形県産|新潟県産|長野県産|静岡県産|愛知県産|京都府産|和歌山県産|"
            "愛媛県産|高知県産|福岡県産|熊本県産|宮崎県産|鹿児島県産|沖縄県産|国産|九州産|信州産"
        ),
        targets=_words(
            "彼女|彼氏|妻|夫|父|母|両親|子供|赤ちゃん|女性|男性|高校生|大学生|新社会人|一人暮らし|初心者|"
            "高齢者|ファミリー|カップル|女子|メンズ|レディース|おじいちゃん|おばあちゃん|上司|友達"
        )
        + tuple(f"{age}代 {who}" for age in range(20, 70, 10) for who in ("男性", "女性"))
        + tuple(f"{age}代" for age in range(10, 80, 10)),
        budgets=tuple(f"{n}円以下" for n in (500, 1000, 1500, 2000, 3000, 5000, 8000))
        + tuple(f"{n}万円{s}" for n in (1, 2, 3, 5, 10) for s in ("以下", "以内", "台"))
        + _words("予算3000円|予算1万円|コスパ最強|プチプラ|高コスパ|ワンコイン"),
        questions=_words(
            "どこで買える|どれがいい|違い|とは|使い方|いつまで|何がいい|売ってる場所|見分け方|寿命|代わり|"
            "失敗しない|後悔|知恵袋"
        ),
        model_prefixes=_words("MK|HX|ZT|NV|KR|AS|YM|TK|SR|PX|JL|VQ"),
        openers=_words(
            "{head}の定番商品です。|{origin}から直送の{head}です。|{brand}が手がける{head}。|毎日使える{head}。|"
            "ギフトにも人気の{head}。|当店売れ筋の{head}をお届けします。|{quality}にこだわった{head}です。"
        ),
        middles=_words(
            "{attr}で使いやすい仕様です。|{attr}タイプ、{size}。|{attr}と{attr2}を両立しました。|"
            "{size}の大満足サイズです。|{attr}仕様でご家族みんなで楽しめます。"
        ),
        closers=_words(
            "{season}の贈り物にもおすすめです。|ご家庭用にも業務用にも。|レビュー高評価多数。|"
            "お一人様5点まで。|数量限定のためお早めに。|メーカー保証付きで安心です。|"
        ),
    )


def _en_vocabulary() -> Vocabulary:
    return Vocabulary(
        lang="en",
        categories=_en_categories(),
        regions=_words(
            "tokyo|osaka|kyoto|hokkaido|okinawa|fukuoka|sapporo|nagoya|hiroshima|kobe|nara|yokohama|sendai|"
            "kanazawa|hakone|new york|los angeles|san francisco|seattle|chicago|boston|austin|miami|denver|"
            "portland|san diego|las vegas|nashville|new orleans|honolulu|london|paris|berlin|seoul|bangkok|"
            "singapore|sydney|melbourne|vancouver|toronto|california|texas|florida|oregon|vermont|maine|"
            "colorado|arizona|hawaii|alaska"
        ),
        areas=_words(
            "shibuya|shinjuku|ginza|asakusa|akihabara|roppongi|umeda|namba|gion|tenjin|downtown|midtown|"
            "soho|brooklyn|manhattan|chinatown|waikiki|the mission|capitol hill|south beach|east village|"
            "west end|old town|union square|harbor front"
        ),
        intents=_words(
            "reviews|online|sale|deals|for sale|price|"
            "coupon|near me|ranking|comparison|in stock|free shipping|"
            "gift|bulk|discount code|official store|vs|2024|2025|under 50|under 100|black friday"
        ),
        prefix_intents=_words(
            "best|cheap|top rated|affordable|buy|discount|luxury|popular|top 10|where to buy"
        ),
        qualities=_words(
            "premium|handmade|limited edition|japanese|imported|artisan|local|eco friendly|certified|"
            "genuine|new|bestselling|budget|professional|heavy duty|clearance|trending|same day shipping"
        ),
        seasons=_words(
            "spring|summer|fall|winter|holiday|christmas|valentines|mothers day|fathers day|halloween|"
            "back to school|new year|thanksgiving|2023|2024|2025"
        ),
        promos=_words(
            "Free Shipping|Official|Bestseller|Limited Time|Outlet|Prime Deal|Only 5 Left|New Arrival|"
            "Clearance|Ships Today|1 Year Warranty|Top Rated|Gift Ready|Save 20%"
        ),
        origins=_words(
            "Hokkaido|Shizuoka|Kagoshima|Uji|Niigata|Aomori|"
            "Okinawa|California|Oregon|Vermont|Kyoto|Napa Valley|"
            "Colombian|Ethiopian|Italian|French"
        ),
        targets=_words(
            "for men|for women|for kids|for toddlers|for teens|for dad|for mom|for her|for him|for couples|"
            "for seniors|for beginners|for students|for small apartments|for travel|for home|for office|"
            "for college|for family|for two|for gifts|for everyday use"
        ),
        budgets=tuple(f"under ${n}" for n in (10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000))
        + _words("budget friendly|best value|cheap but good|high end"),
        questions=_words(
            "how to choose|which is best|worth it|alternatives|where to buy|is it safe|how long does it last|"
            "pros and cons|buying guide|reddit"
        ),
        model_prefixes=_words("MK|HX|ZT|NV|KR|AS|YM|TK|SR|PX|JL|VQ"),
        openers=_words(
            "Our classic {head}.|{head} shipped direct from {origin}.|{head} made by {brand}.|"
            "Everyday {head}.|A best-selling {head} for gifts.|{quality} {head} you will love."
        ),
        middles=_words(
            "{attr} design for easy use.|{attr}, {size}.|Combines {attr} and {attr2}.|{size} of pure value.|"
            "{attr} so the whole family can enjoy it."
        ),
        closers=_words(
            "A perfect {season} gift.|For home or professional use.|Thousands of five star reviews.|"
            "Limit 5 per customer.|While supplies last.|Backed by a manufacturer warranty.|"
        ),
    )


_VOCABULARIES: dict[str, Vocabulary] = {}


def vocabulary(lang: str) -> Vocabulary:
    """The vocabulary of one language (built once; tests read it to check category consistency)."""
    if lang not in LANGS:
        raise ConfigError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
    if lang not in _VOCABULARIES:
        _VOCABULARIES[lang] = _ja_vocabulary() if lang == "ja" else _en_vocabulary()
    return _VOCABULARIES[lang]


def category_heads(lang: str) -> dict[str, frozenset[str]]:
    """Category label (as written in the data of ``lang``) -> head nouns of every language that may
    appear under it; in Japanese mode a few English queries carry the Japanese category label."""
    own = vocabulary(lang)
    heads = {c.label: set(c.heads) for c in own.categories}
    for other in LANGS:
        for c in vocabulary(other).categories:
            heads[own.category(c.key).label] |= set(c.heads) | {h.lower() for h in c.heads}
    return {label: frozenset(words) for label, words in heads.items()}


# --------------------------------------------------------------------------------------------------
# Text composition (one row at a time, from one seeded random.Random)
# --------------------------------------------------------------------------------------------------


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


def compose_keyword(rng: random.Random, vocab: Vocabulary, cat: Category) -> str:
    """A search-style query: a lead (place, quality, season, brand or audience), the category's head noun,
    modifiers (attribute, size, budget, audience) and an intent, in one of ``KEYWORD_SHAPES``, e.g.
    ``渋谷 焼肉 食べ放題`` or ``best noise cancelling wireless earbuds under $100``."""
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
    terms.append(_pick(rng, cat.heads))
    terms.extend(_modifier(rng, vocab, cat)[0] for _ in range(n_mods))
    if intent:
        terms.append(_intent(rng, vocab, cat))
    return " ".join(dict.fromkeys(terms))


def _compose_keyword_en(rng: random.Random, vocab: Vocabulary, cat: Category) -> str:
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
    terms = [*before, *middle, _pick(rng, cat.heads), *after]
    if intent:
        terms.append(_intent(rng, vocab, cat))
    return " ".join(dict.fromkeys(terms)).lower()


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


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

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
    text = compose_keyword(rng, vocabulary(row_lang), vocabulary(row_lang).category(cat.key))
    rows["keyword"].append(text)
    rows["category"].append(None if rng.random() < NULL_CATEGORY_SHARE else cat.label)
    rows["lang"].append(row_lang)


def _compose_product_row(rng: random.Random, lang: str, rows: Rows) -> None:
    vocab = vocabulary(lang)
    cat = _pick_category(rng, vocab)
    head = _pick(rng, cat.heads)
    brand = None if rng.random() < NULL_BRAND_SHARE else _pick(rng, cat.brands)
    rows["product_name"].append(compose_product_name(rng, vocab, cat, head, brand))
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


# --------------------------------------------------------------------------------------------------
# Seeds, ids and the defect plan
# --------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from labelled parts; sha256 so nearby inputs give unrelated streams."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 array arithmetic wraps, as the algorithm needs)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def position_uniforms(key: int, positions: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) per position, a pure function of (key, stream, position): defects can be decided
    for any row of any partition without generating the rows before it."""
    salted = np.uint64(derive_seed(key, stream) & _MASK64)
    x = _mix64((np.asarray(positions, dtype=np.int64).astype(np.uint64) * _GOLDEN) ^ salted)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def days_since_epoch(dt: date) -> int:
    return (dt - EPOCH).days


def row_ids(dt: date, positions: np.ndarray | Sequence[int]) -> np.ndarray:
    """Business ids of rows of partition ``dt`` (see ``ID_STRIDE``)."""
    return np.int64(days_since_epoch(dt)) * np.int64(ID_STRIDE) + np.asarray(positions, dtype=np.int64) + 1


@dataclass(frozen=True)
class Defect:
    """One kind of injected bad row and what the pipeline is expected to do with it."""

    kind: str
    expect: str
    placement: str
    """``inline`` (in the main part files) or the stem of the variant file the row is diverted to."""
    description: str


DEFECTS: tuple[Defect, ...] = (
    Defect("null_text", "dead_letter", "inline", "text column is null"),
    Defect("empty_text", "dead_letter", "inline", "text column is the empty string"),
    Defect("whitespace_text", "dead_letter", "inline", "text is only spaces, tabs, newlines or U+3000"),
    Defect("text_too_long", "dead_letter", "inline", f"text is {LONG_TEXT_CHARS} characters"),
    Defect(
        "duplicate_id",
        "dead_letter",
        "inline",
        "id of an earlier clean row of the same partition (duplicate_of)",
    ),
    Defect(
        "duplicate_id_cross_partition",
        "upsert",
        "inline",
        "id of the clean row at the same position of the previous calendar day's partition (original_*): "
        "a later version of that row, valid on its own; re-indexing it overwrites the earlier document",
    ),
    Defect(
        "wrong_type",
        "dead_letter",
        "part-wrongtype",
        "row in a file whose text column is int64 (a typed Parquet column cannot hold a wrong-typed cell)",
    ),
    Defect("extra_column", "index", "part-extracolumn", "row in a file with one extra column (ignore it)"),
    Defect(
        "missing_optional_column",
        "index",
        "part-missingcol",
        "row in a file without the optional column (null)",
    ),
)
DEFECT_BY_KIND = {d.kind: d for d in DEFECTS}
_KIND_INDEX = {d.kind: i for i, d in enumerate(DEFECTS)}
EXTRA_COLUMN = "legacy_source"
WHITESPACE_TEXTS = (" ", "   ", "\u3000", "\t", " \u3000 \n", "\u3000\u3000")
_STREAM_BAD, _STREAM_KIND, _STREAM_DETAIL = 0, 1, 2
_STREAM_ORIGINAL = 10  # .. _STREAM_ORIGINAL + _ORIGINAL_ATTEMPTS
_ORIGINAL_ATTEMPTS = 8


@dataclass(frozen=True)
class PartitionKey:
    """Everything a partition's content depends on."""

    table: str
    dt: date
    seed: int
    lang: str
    bad_rate: float

    @property
    def defect_key(self) -> int:
        return derive_seed("defects", self.seed, self.table, self.lang, self.dt.isoformat())

    def block_seed(self, block: int) -> int:
        return derive_seed("rows", self.seed, self.table, self.lang, self.dt.isoformat(), block)

    def previous_day(self) -> PartitionKey:
        return PartitionKey(self.table, self.dt - timedelta(days=1), self.seed, self.lang, self.bad_rate)


def bad_mask(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """Which positions carry a defect. Position 0 never does, so every duplicate has a clean original."""
    positions = np.asarray(positions, dtype=np.int64)
    if key.bad_rate <= 0:
        return np.zeros(positions.shape, dtype=bool)
    return (position_uniforms(key.defect_key, positions, _STREAM_BAD) < key.bad_rate) & (positions > 0)


def defect_kinds(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """Kind index (into ``DEFECTS``) per position: a fixed, equal mix.

    A cross-partition duplicate reuses the id of the *same position* of the previous day, so two of
    them can never share an id (which would make them a within-partition duplicate as well); where
    that row is itself bad there, the position becomes a within-partition duplicate instead."""
    positions = np.asarray(positions, dtype=np.int64)
    u = position_uniforms(key.defect_key, positions, _STREAM_KIND)
    kinds = np.minimum((u * len(DEFECTS)).astype(np.int64), len(DEFECTS) - 1)
    cross = kinds == _KIND_INDEX["duplicate_id_cross_partition"]
    if cross.any():
        unusable = cross & bad_mask(key.previous_day(), positions)
        kinds[unusable] = _KIND_INDEX["duplicate_id"]
    return kinds


def clean_original(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """For each within-partition duplicate at ``positions``, a clean earlier position of the same
    partition, so "first occurrence wins" keeps the original: a few hashed attempts, then position 0
    (never bad)."""
    positions = np.asarray(positions, dtype=np.int64)
    chosen = np.zeros(positions.shape, dtype=np.int64)
    done = np.zeros(positions.shape, dtype=bool)
    for attempt in range(_ORIGINAL_ATTEMPTS):
        u = position_uniforms(key.defect_key, positions, _STREAM_ORIGINAL + attempt)
        candidate = (u * positions).astype(np.int64)
        ok = ~bad_mask(key, candidate) & ~done
        chosen[ok] = candidate[ok]
        done |= ok
    return chosen


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class PartWriter:
    """Writes one stream of rows as ``<stem>-NNNNN.parquet`` files of at most ``rows_per_file`` rows, in
    row groups of exactly ``row_group_size`` rows (the last of a file may be shorter).

    Rows arrive in generation blocks whose size is unrelated to the row-group size, so they are
    buffered and re-cut here; at most one row group plus one block is held at any time."""

    def __init__(
        self, directory: Path, stem: str, schema: pa.Schema, row_group_size: int, rows_per_file: int | None
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.schema = schema
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file or sys.maxsize
        self.files: list[dict[str, Any]] = []
        self.rows_written = 0
        self.rows_accepted = 0
        """Rows handed to ``write`` so far, written or still buffered: the next row's stream index."""
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def file_name(self, index: int) -> str:
        return f"{self.stem}-{index:05d}.parquet"

    def locate(self, stream_index: int) -> tuple[str, int]:
        """(file, row within file) of the n-th row of this stream."""
        return self.file_name(stream_index // self.rows_per_file), stream_index % self.rows_per_file

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.rows_accepted += table.num_rows
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._drain(final=False)

    def close(self, *, create_empty: bool = False) -> list[dict[str, Any]]:
        self._drain(final=True)
        self._close_file()
        if create_empty and not self.files:
            self._open_file()
            self._close_file()
        return self.files

    def _group_size(self) -> int:
        file_rows = self.files[-1]["rows"] if self._writer is not None else 0
        return min(self.row_group_size, self.rows_per_file - file_rows)

    def _drain(self, *, final: bool) -> None:
        while self._pending_rows and (final or self._pending_rows >= self._group_size()):
            size = min(self._group_size(), self._pending_rows)
            buffered = pa.concat_tables(self._pending)
            self._pending = [buffered.slice(size)] if buffered.num_rows > size else []
            self._pending_rows -= size
            self._write_group(buffered.slice(0, size).combine_chunks())

    def _open_file(self) -> None:
        name = self.file_name(len(self.files))
        self._writer = pq.ParquetWriter(self.directory / name, self.schema, compression=COMPRESSION)
        self.files.append({"file": name, "rows": 0, "row_groups": 0})

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None:
            self._open_file()
        assert self._writer is not None
        self._writer.write_table(group, row_group_size=group.num_rows)
        info = self.files[-1]
        info["rows"] += group.num_rows
        info["row_groups"] += 1
        self.rows_written += group.num_rows
        if info["rows"] >= self.rows_per_file:
            self._close_file()


@dataclass
class _Injected:
    """Columnar record of one defect kind in one partition (compact even at 1M rows x high rates)."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, id_: int, position: int, where: tuple[str, int], **extra: Any) -> None:
        self.ids.append(id_)
        self.positions.append(position)
        self.files.append(where[0])
        self.rows.append(where[1])
        for name, value in extra.items():
            self.extra.setdefault(name, []).append(value)

    def to_json(self, defect: Defect) -> dict[str, Any]:
        return {
            "expect": defect.expect,
            "count": len(self.ids),
            "ids": self.ids,
            "positions": self.positions,
            "files": self.files,
            "rows": self.rows,
            **self.extra,
        }


def _timestamps(rng: random.Random, dt: date) -> int:
    return days_since_epoch(dt) * DAY_US + int(rng.random() * DAY_US)


def clean_block(spec: TableSpec, key: PartitionKey, start: int, stop: int) -> Rows:
    """Clean rows for positions ``[start, stop)``: one generation block from its first row, so each row
    is the same whatever the partition size (a shorter block is a prefix of the full one)."""
    if start % GEN_BLOCK or stop - start > GEN_BLOCK:
        raise ValueError(f"[{start}, {stop}) is not a prefix of one block of {GEN_BLOCK} rows")
    rng = random.Random(key.block_seed(start // GEN_BLOCK))
    rows: Rows = {f.name: [] for f in spec.schema}
    rows[spec.id_column] = row_ids(key.dt, np.arange(start, stop)).tolist()
    for _ in range(start, stop):
        spec.compose(rng, key.lang, rows)
        rows["updated_at"].append(_timestamps(rng, key.dt))
    return rows


def _long_text(text: str) -> str:
    return ((text + " ") * (LONG_TEXT_CHARS // max(len(text) + 1, 1) + 1))[:LONG_TEXT_CHARS]


def _rows_to_table(rows: Rows, schema: pa.Schema, indices: Iterable[int]) -> pa.Table:
    index = list(indices)
    return pa.Table.from_arrays([_column(rows[f.name], f.type, index) for f in schema], schema=schema)


def _column(values: list[Any], type_: pa.DataType, index: list[int]) -> pa.Array:
    """Timestamps are kept as epoch microseconds and viewed as the tz-aware type: building a tz-aware
    array from Python ints makes pyarrow import pandas (seconds of start-up for nothing)."""
    picked = [values[i] for i in index]
    if pa.types.is_timestamp(type_):
        return pa.array(picked, type=pa.int64()).view(type_)
    return pa.array(picked, type=type_)


def _variant_schema(spec: TableSpec, kind: str) -> pa.Schema:
    if kind == "wrong_type":
        return spec.schema.set(
            spec.schema.get_field_index(spec.text_column), pa.field(spec.text_column, pa.int64())
        )
    if kind == "extra_column":
        return spec.schema.append(pa.field(EXTRA_COLUMN, pa.string()))
    return spec.schema.remove(spec.schema.get_field_index(spec.optional_column))


class PartitionWriter:
    """Generates and writes one partition: clean rows block by block, each defect applied in place or
    diverted to its variant file, and the manifest entry describing exactly what was injected."""

    def __init__(
        self,
        spec: TableSpec,
        key: PartitionKey,
        rows: int,
        directory: Path,
        row_group_size: int,
        rows_per_file: int | None,
    ) -> None:
        self.spec = spec
        self.key = key
        self.rows = rows
        self.directory = directory
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file
        self.main = PartWriter(directory, "part", spec.schema, row_group_size, rows_per_file)
        self.variants: dict[str, PartWriter] = {}
        self.injected: dict[str, _Injected] = {d.kind: _Injected() for d in DEFECTS}

    def run(self) -> list[dict[str, Any]]:
        for start in range(0, self.rows, GEN_BLOCK):
            self._block(start, min(start + GEN_BLOCK, self.rows))
        files = self.main.close(create_empty=True)
        for variant in self.variants.values():
            files += variant.close()
        return files

    def _variant(self, kind: str) -> PartWriter:
        if kind not in self.variants:
            stem = DEFECT_BY_KIND[kind].placement
            schema = _variant_schema(self.spec, kind)
            self.variants[kind] = PartWriter(
                self.directory, stem, schema, self.row_group_size, self.rows_per_file
            )
        return self.variants[kind]

    def _block(self, start: int, stop: int) -> None:
        rows = clean_block(self.spec, self.key, start, stop)
        positions = np.arange(start, stop, dtype=np.int64)
        bad = bad_mask(self.key, positions)
        kinds = defect_kinds(self.key, positions)
        diverted: dict[str, list[int]] = {}
        inline_kept: list[int] = []
        for i in range(stop - start):
            kind = DEFECTS[kinds[i]] if bad[i] else None
            if kind is not None and kind.placement != "inline":
                diverted.setdefault(kind.kind, []).append(i)
            else:
                inline_kept.append(i)
        # Inline defects, then the main stream (its stream index is what locates a row in its file).
        stream_base = self.main.rows_accepted
        for n, i in enumerate(inline_kept):
            if bad[i]:
                where = self.main.locate(stream_base + n)
                self._apply_inline(DEFECTS[kinds[i]].kind, rows, i, int(positions[i]), where)
        if inline_kept:
            self.main.write(_rows_to_table(rows, self.spec.schema, inline_kept))
        for kind, indices in sorted(diverted.items()):
            self._write_variant(kind, rows, indices, positions)

    def _apply_inline(self, kind: str, rows: Rows, i: int, position: int, where: tuple[str, int]) -> None:
        text, ids = rows[self.spec.text_column], rows[self.spec.id_column]
        extra: dict[str, Any] = {}
        if kind == "null_text":
            text[i] = None
        elif kind == "empty_text":
            text[i] = ""
        elif kind == "whitespace_text":
            u = position_uniforms(self.key.defect_key, np.array([position]), _STREAM_DETAIL)[0]
            text[i] = WHITESPACE_TEXTS[int(u * len(WHITESPACE_TEXTS))]
        elif kind == "text_too_long":
            text[i] = _long_text(text[i])
        elif kind == "duplicate_id":
            original = int(clean_original(self.key, np.array([position]))[0])
            ids[i] = int(row_ids(self.key.dt, [original])[0])
            extra = {"duplicate_of_positions": original}
        elif kind == "duplicate_id_cross_partition":
            ids[i] = int(row_ids(self.key.previous_day().dt, [position])[0])
            extra = {"original_positions": position}
        self.injected[kind].add(ids[i], position, where, **extra)

    def _write_variant(self, kind: str, rows: Rows, indices: list[int], positions: np.ndarray) -> None:
        writer = self._variant(kind)
        base = writer.rows_accepted
        schema = writer.schema
        if kind == "wrong_type":
            u = position_uniforms(self.key.defect_key, positions[indices], _STREAM_DETAIL)
            # JAN-like numbers: what a spreadsheet export does to a keyword column full of barcodes.
            values = (4_900_000_000_000 + (u * 99_999_999_999).astype(np.int64)).tolist()
            patched = dict(rows)
            patched[self.spec.text_column] = [None] * len(rows[self.spec.id_column])
            for value, i in zip(values, indices, strict=True):
                patched[self.spec.text_column][i] = value
            table = _rows_to_table(patched, schema, indices)
        elif kind == "extra_column":
            patched = dict(rows)
            patched[EXTRA_COLUMN] = [None] * len(rows[self.spec.id_column])
            for i in indices:
                patched[EXTRA_COLUMN][i] = f"legacy-import-{int(positions[i]) % 97:02d}"
            table = _rows_to_table(patched, schema, indices)
        else:
            table = _rows_to_table(rows, schema, indices)
        for n, i in enumerate(indices):
            self.injected[kind].add(rows[self.spec.id_column][i], int(positions[i]), writer.locate(base + n))
        writer.write(table)


def _bad_file_ids(dt: date) -> list[int]:
    return row_ids(dt, np.arange(BAD_FILE_ID_OFFSET, BAD_FILE_ID_OFFSET + BAD_FILE_ROWS)).tolist()


def write_bad_files(spec: TableSpec, key: PartitionKey, directory: Path) -> list[dict[str, Any]]:
    """Whole files the pipeline must survive: zero rows (nothing to do), a required column missing or an
    id of the wrong type (rows that cannot be validated or identified: reject the file, naming it and the
    column) and a file that is not Parquet at all."""
    ids = _bad_file_ids(key.dt)
    rows = clean_block(spec, key, 0, min(BAD_FILE_ROWS, GEN_BLOCK))
    rows[spec.id_column] = ids
    full = _rows_to_table(rows, spec.schema, range(BAD_FILE_ROWS))
    entries: list[dict[str, Any]] = []

    pq.write_table(spec.schema.empty_table(), directory / "part-empty.parquet", compression=COMPRESSION)
    entries.append({"file": "part-empty.parquet", "kind": "zero_rows", "expect": "skip", "rows": 0})

    no_text = full.drop_columns([spec.text_column])
    pq.write_table(no_text, directory / "part-badschema-notext.parquet", compression=COMPRESSION)
    entries.append(
        {
            "file": "part-badschema-notext.parquet",
            "kind": "missing_required_column",
            "expect": "reject_file",
            "column": spec.text_column,
            "rows": BAD_FILE_ROWS,
            "ids": ids,
        }
    )

    string_ids = pa.array([f"{spec.name[0]}-{i}" for i in ids], type=pa.string())
    id_index = spec.schema.get_field_index(spec.id_column)
    id_string = full.set_column(id_index, pa.field(spec.id_column, pa.string()), string_ids)
    pq.write_table(id_string, directory / "part-badschema-idstring.parquet", compression=COMPRESSION)
    entries.append(
        {
            "file": "part-badschema-idstring.parquet",
            "kind": "id_wrong_type",
            "expect": "reject_file",
            "column": spec.id_column,
            "rows": BAD_FILE_ROWS,
            "ids": string_ids.to_pylist(),
        }
    )

    (directory / "part-garbage.parquet").write_text(
        "this is not a parquet file: a CSV export saved with the wrong extension\nid,text\n1,abc\n",
        encoding="utf-8",
    )
    entries.append({"file": "part-garbage.parquet", "kind": "not_parquet", "expect": "reject_file"})
    return entries


# --------------------------------------------------------------------------------------------------
# Runs: options, partitions, manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateOptions:
    """Validated arguments of one generator run (the API and the CLI both build one)."""

    out_root: Path
    keywords: int = 1000
    products: int = 1000
    dates: tuple[date, ...] = (date(2024, 1, 1),)
    lang: str = "ja"
    seed: int = 42
    bad_rate: float = 0.0
    bad_files: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    rows_per_file: int | None = None
    tables: tuple[str, ...] = TABLES

    def __post_init__(self) -> None:
        for name in ("keywords", "products"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.dates:
            raise ConfigError("at least one date is required")
        if len(set(self.dates)) != len(self.dates):
            raise ConfigError(f"duplicate dates: {sorted(d.isoformat() for d in self.dates)}")
        for dt in self.dates:
            if not MIN_DATE <= dt <= MAX_DATE:
                raise ConfigError(f"date {dt} is outside {MIN_DATE}..{MAX_DATE}")
        if self.lang not in LANGS:
            raise ConfigError(f"lang must be one of {', '.join(LANGS)}, got {self.lang!r}")
        if not 0.0 <= self.bad_rate <= 1.0:  # also rejects NaN
            raise ConfigError(f"bad_rate must be between 0 and 1, got {self.bad_rate!r}")
        if self.row_group_size < 1:
            raise ConfigError(f"row_group_size must be at least 1, got {self.row_group_size}")
        if self.rows_per_file is not None and self.rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be at least 1, got {self.rows_per_file}")
        unknown = set(self.tables) - set(TABLES)
        if unknown or not self.tables:
            raise ConfigError(f"tables must be a non-empty subset of {TABLES}, got {self.tables!r}")
        for name in self.tables:
            per_partition = max(split_rows(getattr(self, name), len(self.dates)))
            if per_partition > MAX_ROWS_PER_PARTITION:
                raise ConfigError(
                    f"{name}: {per_partition} rows in one partition is over "
                    f"{MAX_ROWS_PER_PARTITION}; spread them over more dates"
                )

    def settings(self) -> dict[str, Any]:
        """What a partition's content and layout depend on (stored with each manifest entry)."""
        return {
            "seed": self.seed,
            "lang": self.lang,
            "bad_rate": self.bad_rate,
            "bad_files": self.bad_files,
            "row_group_size": self.row_group_size,
            "rows_per_file": self.rows_per_file,
        }


def split_rows(total: int, parts: int) -> list[int]:
    """Spread a table's total over its partitions in date order; earlier dates take the remainder."""
    base, remainder = divmod(total, parts)
    return [base + (1 if i < remainder else 0) for i in range(parts)]


def date_range(start: date, days: int) -> tuple[date, ...]:
    return tuple(start + timedelta(days=i) for i in range(days))


def partition_dir(out_root: Path, table: str, dt: date) -> Path:
    return Path(out_root) / table / f"dt={dt.isoformat()}"


def _expected(injected: dict[str, _Injected], rows: int) -> dict[str, Any]:
    """What a correct pipeline run over the partition's data files should report."""
    dead = {
        kind: len(rec.ids) for kind, rec in injected.items() if DEFECT_BY_KIND[kind].expect == "dead_letter"
    }
    dead = {k: v for k, v in dead.items() if v}
    total_dead = sum(dead.values())
    return {"rows_in": rows, "dead_letter": dead, "dead_lettered": total_dead, "indexed": rows - total_dead}


def write_partition(spec: TableSpec, options: GenerateOptions, dt: date, rows: int) -> dict[str, Any]:
    """Write one partition into a hidden temporary directory, then swap it in, so readers never see a
    half-written partition and a regenerated partition keeps no stale files; returns its manifest entry."""
    key = PartitionKey(spec.name, dt, options.seed, options.lang, options.bad_rate)
    final = partition_dir(options.out_root, spec.name, dt)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer = PartitionWriter(spec, key, rows, staging, options.row_group_size, options.rows_per_file)
    files = writer.run()
    bad_files = write_bad_files(spec, key, staging) if options.bad_files else []
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return {
        "settings": options.settings(),
        "rows": rows,
        "files": sorted(files, key=lambda f: f["file"]),
        "injected": {
            d.kind: writer.injected[d.kind].to_json(d) for d in DEFECTS if writer.injected[d.kind].ids
        },
        "expected": _expected(writer.injected, rows),
        "bad_files": bad_files,
    }


def _annotate_cross_partition(partitions: dict[str, dict[str, Any]]) -> None:
    """Mark whether each cross-partition duplicate's original exists in the dataset as it now stands
    (the data never depends on which other dates exist; only this note does)."""
    for dt_text, entry in partitions.items():
        cross = entry["injected"].get("duplicate_id_cross_partition")
        if not cross:
            continue
        previous = (date.fromisoformat(dt_text) - timedelta(days=1)).isoformat()
        source = partitions.get(previous)
        same = source is not None and all(
            source["settings"][k] == entry["settings"][k] for k in ("seed", "lang", "bad_rate")
        )
        cross["original_dt"] = previous
        cross["original_present"] = [
            bool(same and source is not None and pos < source["rows"]) for pos in cross["original_positions"]
        ]


def write_manifest(out_root: Path, spec: TableSpec, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge this run's partitions into ``<table>/_injected.json`` (entries of partitions that still exist
    but were not regenerated are kept, so runs over different dates add up)."""
    path = Path(out_root) / spec.name / MANIFEST_NAME
    partitions: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("format") == MANIFEST_FORMAT:
            for dt_text, entry in previous.get("partitions", {}).items():
                if partition_dir(out_root, spec.name, date.fromisoformat(dt_text)).is_dir():
                    partitions[dt_text] = entry
    partitions.update(entries)
    partitions = dict(sorted(partitions.items()))
    _annotate_cross_partition(partitions)
    manifest = {
        "format": MANIFEST_FORMAT,
        "table": spec.name,
        "id_column": spec.id_column,
        "text_column": spec.text_column,
        "optional_column": spec.optional_column,
        "extra_column": EXTRA_COLUMN,
        "max_text_chars_injected": LONG_TEXT_CHARS,
        "defects": {
            d.kind: {"expect": d.expect, "file": d.placement, "description": d.description} for d in DEFECTS
        },
        "partitions": partitions,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def generate_table(options: GenerateOptions, table: str) -> dict[str, Any]:
    """Every partition of one table, then its manifest; returns the table's summary."""
    spec = TABLE_SPECS[table]
    started = time.perf_counter()
    dates = sorted(options.dates)
    entries: dict[str, dict[str, Any]] = {}
    for dt, rows in zip(dates, split_rows(getattr(options, table), len(dates)), strict=True):
        entries[dt.isoformat()] = write_partition(spec, options, dt, rows)
    manifest = write_manifest(options.out_root, spec, entries)
    files = [f for e in entries.values() for f in e["files"]]
    return {
        "table": table,
        "path": str(Path(options.out_root) / table),
        "manifest": str(manifest),
        "rows": sum(e["rows"] for e in entries.values()),
        "partitions": {dt: e["rows"] for dt, e in entries.items()},
        "files": len(files),
        "row_groups": sum(f["row_groups"] for f in files),
        "injected": sum(r["count"] for e in entries.values() for r in e["injected"].values()),
        "expected_dead_letters": sum(e["expected"]["dead_lettered"] for e in entries.values()),
        "bad_files": sum(len(e["bad_files"]) for e in entries.values()),
        "seconds": round(time.perf_counter() - started, 3),
    }


def generate(
    out_root: str | Path,
    *,
    keywords: int = 1000,
    products: int = 1000,
    dates: Sequence[date | str] = ("2024-01-01",),
    lang: str = "ja",
    seed: int = 42,
    bad_rate: float = 0.0,
    bad_files: bool = False,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    rows_per_file: int | None = None,
    tables: Sequence[str] = TABLES,
) -> dict[str, Any]:
    """Generate the sample dataset under ``out_root``; returns ``{"out_root", "tables": {name: summary}}``.

    Raises ``ConfigError`` for invalid arguments. Partitions of the given dates are replaced; other
    partitions already under ``out_root`` are left alone."""
    options = GenerateOptions(
        out_root=Path(out_root),
        keywords=keywords,
        products=products,
        dates=tuple(parse_date(d) if isinstance(d, str) else d for d in dates),
        lang=lang,
        seed=seed,
        bad_rate=float(bad_rate),
        bad_files=bad_files,
        row_group_size=row_group_size,
        rows_per_file=rows_per_file,
        tables=tuple(tables),
    )
    return run_options(options)


def run_options(options: GenerateOptions) -> dict[str, Any]:
    summary = {name: generate_table(options, name) for name in options.tables if getattr(options, name) > 0}
    return {"out_root": str(options.out_root), "tables": summary}


def read_manifest(out_root: str | Path, table: str) -> dict[str, Any]:
    """The manifest of one table (for tests and the pipeline's accounting checks)."""
    return json.loads((Path(out_root) / table / MANIFEST_NAME).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_date(text: str) -> date:
    """Strict ``YYYY-MM-DD`` (``date.fromisoformat`` alone would also take ``20240101``)."""
    if not _DATE_RE.match(text):
        raise ConfigError(f"invalid date {text!r}: expected YYYY-MM-DD")
    try:
        value = date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"invalid date {text!r}: {exc}") from None
    if not MIN_DATE <= value <= MAX_DATE:
        raise ConfigError(f"date {text} is outside {MIN_DATE}..{MAX_DATE}")
    return value


def _arg_date(text: str) -> date:
    try:
        return parse_date(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _arg_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the generator, for this module's ``main`` and for a subcommand of the package CLI
    (which then calls ``run(args)``: cross-argument errors are reported through the same parser)."""
    parser.add_argument("--out", type=Path, required=True, help="output root (tables are folders under it)")
    parser.add_argument(
        "--keywords", type=_arg_int(0), default=1000, help="keyword rows in total (default 1000)"
    )
    parser.add_argument(
        "--products", type=_arg_int(0), default=1000, help="product rows in total (default 1000)"
    )
    parser.add_argument(
        "--tables", nargs="+", choices=TABLES, default=list(TABLES), help="tables to generate"
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--dates", nargs="+", type=_arg_date, help="partition dates, YYYY-MM-DD")
    when.add_argument("--start-date", type=_arg_date, help="first partition date (with --days)")
    parser.add_argument(
        "--days", type=_arg_int(1), default=None, help="number of daily partitions from --start-date"
    )
    parser.add_argument("--lang", choices=LANGS, default="ja", help="vocabulary language (default ja)")
    parser.add_argument("--seed", type=int, default=42, help="same seed + arguments -> identical files")
    parser.add_argument(
        "--bad-rate", type=_arg_rate, default=0.0, help="share of rows with an injected defect"
    )
    parser.add_argument(
        "--bad-files", action="store_true", help="add zero-row, wrong-schema and non-Parquet files"
    )
    parser.add_argument("--row-group-size", type=_arg_int(1), default=DEFAULT_ROW_GROUP_SIZE)
    parser.add_argument("--rows-per-file", type=_arg_int(1), default=None, help="split partitions into files")
    parser.set_defaults(func=run, sample_data_parser=parser)
    return parser


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    if args.days is not None and args.start_date is None:
        raise ConfigError("--days needs --start-date")
    if args.start_date is not None:
        dates = date_range(args.start_date, args.days or 1)
    else:
        dates = tuple(args.dates or (date(2024, 1, 1),))
    return GenerateOptions(
        out_root=args.out,
        keywords=args.keywords,
        products=args.products,
        dates=dates,
        lang=args.lang,
        seed=args.seed,
        bad_rate=args.bad_rate,
        bad_files=args.bad_files,
        row_group_size=args.row_group_size,
        rows_per_file=args.rows_per_file,
        tables=tuple(dict.fromkeys(args.tables)),
    )


def format_summary(summary: dict[str, Any]) -> str:
    return (
        f"{summary['table']}: {summary['rows']} rows in {len(summary['partitions'])} partitions, "
        f"{summary['files']} files, {summary['row_groups']} row groups, "
        f"{summary['injected']} injected bad rows "
        f"({summary['expected_dead_letters']} to dead-letter), {summary['bad_files']} bad files "
        f"-> {summary['path']} ({summary['seconds']:.1f} s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        args.sample_data_parser.error(str(exc))
    result = run_options(options)
    for summary in result["tables"].values():
        print(format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedding_pipeline.sample.generate",
        description="Generate deterministic keyword/product sample data as dt-partitioned Parquet.",
    )
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
