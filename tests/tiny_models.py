"""Build tiny random encoders of each supported architecture, with tokenizers trained on the fly.

No weights can be downloaded here, and the tests must cover BERT, XLM-R and ModernBERT exports
anyway: a 2-layer, 32-wide model of each architecture exports, gates and serves exactly like the
real thing, in seconds.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "東京 ラーメン 人気店",
    "北海道 旅行 冬 温泉",
    "京都 紅葉 見頃",
    "大阪 たこ焼き 食べ放題",
    "ワイヤレスイヤホン ノイズキャンセリング",
    "国産 有機 緑茶 ティーバッグ",
    "子供用 自転車 補助輪",
    "今日の天気はとても良いので公園に散歩に行きました",
    "です ます ござる ガギグゲゴ パピプペポ",
    "cheap flights from tokyo to seoul",
    "best running shoes for flat feet",
    "organic cotton t-shirt",
    "stainless steel water bottle keeps drinks cold",
    "the quick brown fox jumps over the lazy dog",
    "서울 맛집 추천",
    "北京 烤鸭 哪家 好吃",
    "Günstige Ferienwohnung am Meer",
    "Recette facile de crêpes",
    "query: passage: 検索クエリ: 検索文書:",
    "0123456789 !?.,:;-_/()[]{}%&@#+*=<>",
] * 20
VOCAB_SIZE = 600
MAX_POSITIONS = 128


BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def _wrap(tok, start: str, end: str):
    """``<start> text <end>``, as every encoder's tokenizer adds around a single sentence."""
    from tokenizers import processors

    return processors.TemplateProcessing(
        single=f"{start} $A {end}",
        special_tokens=[(start, tok.token_to_id(start)), (end, tok.token_to_id(end))],
    )


def _wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # strip_accents=False: the default strips accents and breaks Japanese voicing marks (です -> てす).
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials))
    tok.post_processor = _wrap(tok, "[CLS]", "[SEP]")
    return tok, dict(BERT_SPECIALS)


def _unigram():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = _wrap(tok, "<s>", "</s>")
    return tok, {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
    }


def _byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = _wrap(tok, "[CLS]", "[SEP]")
    return tok, dict(BERT_SPECIALS)


def build_tiny_model(architecture: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random ``bert`` / ``xlm-roberta`` / ``modernbert`` model + fast tokenizer in ``out_dir``."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        ModernBertConfig,
        ModernBertModel,
        PreTrainedTokenizerFast,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    torch.manual_seed(seed)
    builders = {"bert": _wordpiece, "xlm-roberta": _unigram, "modernbert": _byte_bpe}
    raw, specials = builders[architecture]()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, model_max_length=MAX_POSITIONS - 4, **specials)
    size = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if architecture == "bert":
        model = BertModel(BertConfig(max_position_embeddings=MAX_POSITIONS, **size), add_pooling_layer=False)
    elif architecture == "xlm-roberta":
        model = XLMRobertaModel(
            XLMRobertaConfig(
                max_position_embeddings=MAX_POSITIONS + 2,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **size,
            ),
            add_pooling_layer=False,
        )
    elif architecture == "modernbert":
        model = ModernBertModel(
            ModernBertConfig(
                max_position_embeddings=MAX_POSITIONS,
                global_attn_every_n_layers=2,
                local_attention=16,
                cls_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
                **size,
            )
        )
    else:
        raise ValueError(architecture)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
