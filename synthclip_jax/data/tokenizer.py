"""CLIP BPE tokenizer, token-for-token identical to OpenCLIP's default (`SimpleTokenizer`).

The BPE itself runs in Rust (Hugging Face `tokenizers`, batched); the text cleaning stays Python
because it must be exactly OpenCLIP's (ftfy, html.unescape twice, whitespace collapse, lower()).

`bpe_simple_vocab_16e6.txt.gz` beside this file is copied from open_clip (originally from
github.com/openai/CLIP, MIT License, Copyright (c) 2021 OpenAI).

Equality was checked for every Unicode code point in several contexts. The one known gap:
code points first assigned in a Unicode version newer than the tokenizers library's regex engine
knows (Unicode 16 in tokenizers 0.23) are classed by open_clip per its `regex` package version.
"""
import functools
import gzip
import html
import os
from typing import List, Union

import ftfy
import numpy as np
from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers

VOCAB_SIZE = 49408
SOT_ID = 49406  # <start_of_text>
EOT_ID = 49407  # <end_of_text>
PAD_ID = 0
CONTEXT_LENGTH = 77
BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")

_SPECIALS = {"<start_of_text>": SOT_ID, "<end_of_text>": EOT_ID}
# open_clip's pre-tokenization regex, special tokens first as open_clip builds it. open_clip
# compiles it with IGNORECASE; on lower-cased text that changes exactly two things, spelled out
# here (Oniguruma's "(?i)" folds case differently): U+017F (long s) matches "s" in "'s" and
# "<start_of_text>", and U+0345 (folds to a Greek letter) is left out of the non-letter class,
# so it is dropped like whitespace.
_PATTERN = (r"<[sſ]tart_of_text>|<end_of_text>|'[sſ]|'t|'re|'ve|'m|'ll|'d"
            r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+")


@functools.lru_cache()
def bytes_to_unicode() -> dict:
    """OpenAI's reversible byte -> printable char map (its order is the order of the vocab)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)  # the 188 printable bytes above keep their own char
    return dict(zip(bs, map(chr, cs)))


def clean_whitespace(text: str) -> str:
    """open_clip's 'whitespace' cleaning: whitespace_clean(basic_clean(text))."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: whitespace_clean(basic_clean(text)).lower()."""
    return clean_whitespace(text).lower()


class Tokenizer:
    """OpenCLIP `SimpleTokenizer` equivalent; `tokenize` below uses one cached instance."""

    start_id, end_id, pad_id, vocab_size = SOT_ID, EOT_ID, PAD_ID, VOCAB_SIZE

    def __init__(self, bpe_path: str = BPE_PATH):
        # Same vocab construction as open_clip: bytes, bytes + '</w>', merges, special tokens.
        with gzip.open(bpe_path) as f:
            merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        self.merges = merges
        chars = list(bytes_to_unicode().values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [*_SPECIALS]
        assert len(vocab) == VOCAB_SIZE and vocab[SOT_ID] == "<start_of_text>"
        self.id_to_token = vocab
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._tok = _HFTokenizer(models.BPE(self.vocab, merges, end_of_word_suffix="</w>"))
        self._tok.pre_tokenizer = pre_tokenizers.Sequence([
            # invert=True + "removed": keep exactly the regex matches, like re.findall.
            pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
            # Each word's UTF-8 bytes -> bytes_to_unicode() chars (the same GPT-2 table).
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])

    def _encode_with_specials(self, text: str) -> List[int]:
        # Rare slow path: open_clip maps a literal "<start_of_text>"/"<end_of_text>" word (only
        # where its regex splits one off) to the special id instead of running BPE on it.
        ids = []
        for word, _ in self._tok.pre_tokenizer.pre_tokenize_str(text):
            if word in _SPECIALS:
                ids.append(_SPECIALS[word])
            else:
                ids += [t.id for t in self._tok.model.tokenize(word)]
        return ids

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        """BPE ids of each text after cleaning, without SOT/EOT."""
        texts = [clean(t) for t in texts]
        out = [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        for i, t in enumerate(texts):
            if "<start_of_text>" in t or "<end_of_text>" in t:
                out[i] = self._encode_with_specials(t)
        return out

    def content_length(self, context_length: int) -> int:
        """How many text tokens fit in a row (SOT and EOT take the rest)."""
        return context_length - 2

    def row(self, ids, context_length: int) -> np.ndarray:
        return ids_to_row(ids, context_length)

    def encode(self, text: str) -> List[int]:
        """open_clip's `SimpleTokenizer.encode`: BPE ids of one text, without SOT/EOT."""
        return self.encode_batch([text])[0]

    def decode(self, ids) -> str:
        """Text of token ids, as open_clip decodes it (SOT/EOT/padding included if given)."""
        text = "".join(self.id_to_token[int(i)] for i in ids)
        text = bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")

    def __call__(self, texts: Union[str, List[str]],
                 context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        result = np.zeros((len(texts), context_length), np.int32)
        for row, ids in zip(result, self.encode_batch(texts)):
            row[:] = ids_to_row(ids, context_length)
        return result


def ids_to_row(ids, context_length: int) -> np.ndarray:
    """int32 (context_length,): SOT, BPE `ids`, EOT, padding (PAD_ID == 0); too long a text is
    truncated, keeping EOT as the last token."""
    tokens = [SOT_ID, *ids, EOT_ID]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = EOT_ID
    row = np.zeros(context_length, np.int32)
    row[:len(tokens)] = tokens
    return row


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: Union[str, List[str]], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """int32 (len(texts), context_length), equal to open_clip.get_tokenizer('ViT-B-16')(texts)."""
    return get_tokenizer()(texts, context_length)
