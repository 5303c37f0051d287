"""The text tokenizer a config chooses (`model.text.tokenizer`), for training and evaluation.

  openclip_bpe     OpenAI BPE, token-for-token OpenCLIP's default (`tokenizer.py`); vocab 49408.
  clips_wordpiece  CLIPS's BERT WordPiece layout (`clips_tokenizer.py`) on
                   `model.text.vocab_path`.

Both have `encode_batch(texts)`, `row(ids, context_length)`, `content_length(context_length)`,
`__call__(texts, context_length) -> int32 (N, context_length)`, `vocab_size` and the special ids
`start_id`, `end_id`, `pad_id` that the CLIPS captioner's targets and greedy decoding use.
"""
from typing import NamedTuple

import numpy as np

from synthclip_jax.data.clips_tokenizer import ClipsTokenizer, get_clips_tokenizer
from synthclip_jax.data.tokenizer import Tokenizer, get_tokenizer

TOKENIZER_CLASSES = {"openclip_bpe": Tokenizer, "clips_wordpiece": ClipsTokenizer}


class SpecialIds(NamedTuple):
    start: int
    end: int
    pad: int


def special_ids(name: str = "openclip_bpe") -> SpecialIds:
    """The start/end/pad ids of a tokenizer by name (fixed per layout: no vocab file is read)."""
    if name not in TOKENIZER_CLASSES:
        raise ValueError(f"model.text.tokenizer={name!r}; choose one of "
                         f"{sorted(TOKENIZER_CLASSES)}")
    cls = TOKENIZER_CLASSES[name]
    return SpecialIds(cls.start_id, cls.end_id, cls.pad_id)


def caption_targets(tok, texts, length: int) -> np.ndarray:
    """int32 (N, length): start, ids (truncated to length - 2), end, padding: the captioner's
    target rows in either tokenizer (BPE: its own row layout; WordPiece: CLIPS's row without the
    [CLS] it puts last for pooling, which is no word of the caption)."""
    rows = np.full((len(texts), length), tok.pad_id, np.int32)
    for row, ids in zip(rows, tok.encode_batch(list(texts))):
        tokens = [tok.start_id, *ids[:length - 2], tok.end_id]
        row[:len(tokens)] = tokens
    return rows


def get_text_tokenizer(name: str = "openclip_bpe", vocab_path: str = ""):
    if name == "openclip_bpe":
        return get_tokenizer()
    if name == "clips_wordpiece":
        if not vocab_path:
            raise ValueError("model.text.tokenizer='clips_wordpiece' needs "
                             "model.text.vocab_path (a WordPiece vocab.txt)")
        return get_clips_tokenizer(str(vocab_path))
    raise ValueError(f"model.text.tokenizer={name!r}; choose openclip_bpe or clips_wordpiece")


def tokenizer_of(text_cfg):
    """The tokenizer of `config.model.text` (a config.json from before the keys: BPE)."""
    return get_text_tokenizer(text_cfg.get("tokenizer", "openclip_bpe"),
                              text_cfg.get("vocab_path", ""))


def special_ids_of(text_cfg) -> SpecialIds:
    """The special ids of `config.model.text`'s tokenizer (BPE for a config.json without it)."""
    return special_ids(text_cfg.get("tokenizer", "openclip_bpe"))
