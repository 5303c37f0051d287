"""CLIPS's text tokenizer layout (`CLIPS_Tokenizer` / `CustomTokenizer` of UCSC-VLAA/CLIPS), on a
BERT WordPiece vocab.txt (CLIPS ships bert-base-uncased's, 30522 entries; the model's embedding
table has 32000 rows).

Row layout, context L (80 in the released models):
  [BOS=1] + wordpiece ids[:L-3] + [EOS=2] + zero padding ... + [CLS=101] in the last position,
which is where the bidirectional text tower's 'last' pooling reads. Ids are those of
`tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)` without special tokens, after open_clip's
'whitespace' cleaning (ftfy, html unescape, whitespace collapse; the lower-casing is BERT's).
The CLIPS code truncates at its fixed 80 - 3 whatever the call's context; we truncate at L - 3, so
that every row has length L (the same at L = 80).
"""
import functools

import numpy as np
from tokenizers import BertWordPieceTokenizer

from synthclip_jax.data.tokenizer import clean_whitespace

BOS_ID = 1  # [unused0] in bert-base-uncased
EOS_ID = 2  # [unused1]
CLS_ID = 101  # [CLS], forced into the last position
PAD_ID = 0
CONTEXT_LENGTH = 80
VOCAB_SIZE = 32000  # the released models' embedding rows


def clips_row(ids, context_length: int) -> np.ndarray:
    """int32 (context_length,): BOS, ids (truncated), EOS, zeros, CLS last."""
    tokens = [BOS_ID, *ids[:context_length - 3], EOS_ID]
    row = np.full(context_length, PAD_ID, np.int32)
    row[:len(tokens)] = tokens
    row[-1] = CLS_ID
    return row


class ClipsTokenizer:
    """Same interface as `data.tokenizer.Tokenizer`: encode_batch, row, content_length, call."""

    start_id, end_id, pad_id = BOS_ID, EOS_ID, PAD_ID

    def __init__(self, vocab_path: str):
        self._tok = BertWordPieceTokenizer(str(vocab_path), lowercase=True)
        self.vocab_size = self._tok.get_vocab_size()

    def encode_batch(self, texts) -> list:
        texts = [clean_whitespace(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list:
        return self.encode_batch([text])[0]

    def content_length(self, context_length: int) -> int:
        return context_length - 3  # BOS, EOS and the class token

    def row(self, ids, context_length: int) -> np.ndarray:
        return clips_row(ids, context_length)

    def __call__(self, texts, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        rows = [clips_row(ids, context_length) for ids in self.encode_batch(texts)]
        return np.stack(rows) if rows else np.zeros((0, context_length), np.int32)


@functools.lru_cache(maxsize=None)
def get_clips_tokenizer(vocab_path: str) -> ClipsTokenizer:
    return ClipsTokenizer(vocab_path)
