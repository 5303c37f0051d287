"""How a training caption longer than the text context is cut to fit (CLIPS / CLIPA).

`data.text_reduction` picks the strategy; it applies only when a caption has more than
`context_length - 2` BPE tokens (SOT and EOT take the other two), and only in training
(evaluation always truncates). It works on the ids of the configured tokenizer
(`model.text.tokenizer`; for CLIPS's layout `context_length - 3` tokens fit):

* ``truncate``   the first tokens (OpenCLIP's default tokenizer; the default here).
* ``random``     that many tokens at random positions, in their order (OpenCLIP
                 `random_mask_tokenize`).
* ``block``      one contiguous span at a uniformly random offset (OpenCLIP
                 `simple_mask_tokenize`); with ``subcaption`` the best of CLIPS's strategies.
* ``subcaption`` a random non-empty subset of the caption's sentences, in their order, joined
                 and then truncated (CLIPS's sub-caption; the paper gives no exact sampling
                 rule, this one is ours).

CLIPS trains with short contexts (e.g. `model.text.context_length=34`: 32 tokens) on long
synthetic captions, which is where these differ.
"""
import re

import numpy as np

from synthclip_jax.data.tokenizer import get_tokenizer

MODES = ("truncate", "random", "block", "subcaption")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"data.text_reduction={mode!r}; expected one of {MODES}")
    return mode


def split_sentences(caption: str) -> list:
    return [s for s in _SENTENCE_END.split(caption.strip()) if s]


def tokenize_reduced(caption: str, mode: str, context_length: int,
                     rng: np.random.Generator, tokenizer=None, budget: int = 0) -> np.ndarray:
    """int32 (context_length,): the tokenizer's row of the kept tokens (BPE: SOT, tokens, EOT,
    zero padding). `tokenizer`: `data/text_tokenizer.py`'s choice; default OpenAI BPE.
    `budget` > 0 keeps at most that many caption tokens (`data.partial_caption_tokens`,
    CLIPS's K=32: a partial caption, reduced by `mode`, in a row of the full context)."""
    tok = tokenizer or get_tokenizer()
    keep = tok.content_length(context_length)
    if budget:
        keep = min(keep, budget)
    ids = tok.encode(caption)
    if len(ids) <= keep or mode == "truncate":
        return tok.row(ids[:keep], context_length)
    if mode == "subcaption":
        sentences = split_sentences(caption)
        count = rng.integers(1, len(sentences) + 1)
        picked = np.sort(rng.choice(len(sentences), size=count, replace=False))
        return tok.row(tok.encode(" ".join(sentences[i] for i in picked))[:keep], context_length)
    if mode == "block":
        start = rng.integers(0, len(ids) - keep + 1)
        return tok.row(ids[start:start + keep], context_length)
    positions = np.sort(rng.choice(len(ids), size=keep, replace=False))
    return tok.row([ids[i] for i in positions], context_length)
