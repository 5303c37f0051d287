"""How a training caption longer than the text context is cut to fit (CLIPS / CLIPA).

`data.text_reduction` picks the strategy; it applies only when a caption has more than
`context_length - 2` BPE tokens (SOT and EOT take the other two), and only in training
(evaluation always truncates):

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

from synthclip_jax.data.tokenizer import get_tokenizer, ids_to_row, tokenize

MODES = ("truncate", "random", "block", "subcaption")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"data.text_reduction={mode!r}; expected one of {MODES}")
    return mode


def split_sentences(caption: str) -> list:
    return [s for s in _SENTENCE_END.split(caption.strip()) if s]


def tokenize_reduced(caption: str, mode: str, context_length: int,
                     rng: np.random.Generator) -> np.ndarray:
    """int32 (context_length,): SOT, the kept tokens, EOT, zero padding."""
    if mode == "truncate":
        return tokenize([caption], context_length)[0]
    keep = context_length - 2
    ids = get_tokenizer().encode(caption)
    if len(ids) <= keep:
        return ids_to_row(ids, context_length)
    if mode == "subcaption":
        sentences = split_sentences(caption)
        count = rng.integers(1, len(sentences) + 1)
        picked = np.sort(rng.choice(len(sentences), size=count, replace=False))
        return tokenize([" ".join(sentences[i] for i in picked)], context_length)[0]
    if mode == "block":
        start = rng.integers(0, len(ids) - keep + 1)
        return ids_to_row(ids[start:start + keep], context_length)
    positions = np.sort(rng.choice(len(ids), size=keep, replace=False))
    return ids_to_row([ids[i] for i in positions], context_length)


def tokenize_partial(caption: str, mode: str, context_length: int, budget: int,
                     rng: np.random.Generator) -> np.ndarray:
    """As `tokenize_reduced`, keeping at most `budget` caption tokens (`data.partial_caption_
    tokens`, CLIPS's K=32) in a row of `context_length`; budget 0 = the whole context."""
    if not budget or budget >= context_length - 2:
        return tokenize_reduced(caption, mode, context_length, rng)
    row = np.zeros(context_length, np.int32)
    row[:budget + 2] = tokenize_reduced(caption, mode, budget + 2, rng)
    return row
