"""Caption reduction (CLIPS): each mode reaches exactly the outputs OpenCLIP's helper reaches."""
import itertools
import random

import numpy as np
import pytest

from synthclip_jax.data import text_reduction
from synthclip_jax.data.text_reduction import split_sentences, tokenize_reduced
from synthclip_jax.data.tokenizer import tokenize

CAPTION = "a red ball on green grass near the old tree"  # 10 BPE tokens
CONTEXT = 8  # 6 kept
DRAWS = 600


def ours(mode, caption=CAPTION, context=CONTEXT, draws=DRAWS):
    rng = np.random.default_rng(0)
    return {tuple(tokenize_reduced(caption, mode, context, rng)) for _ in range(draws)}


def openclip_outputs(helper, **kwargs):
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    torch = pytest.importorskip("torch")
    encode = open_clip_tokenizer.SimpleTokenizer().encode
    outputs = set()
    for seed in range(DRAWS):
        random.seed(seed)
        torch.manual_seed(seed)
        row = getattr(open_clip_tokenizer, helper)(
            [CAPTION], CONTEXT, 49406, 49407, encode, **kwargs)[0]
        outputs.add(tuple(int(x) for x in row))
    return outputs


def rows(id_lists):
    out = set()
    for ids in id_lists:
        row = np.zeros(CONTEXT, np.int32)
        row[:len(ids) + 2] = [49406, *ids, 49407]
        out.add(tuple(int(x) for x in row))
    return out


def caption_ids():
    full = tokenize([CAPTION], 77)[0]
    ids = [int(x) for x in full[1:int(np.argmax(full == 49407))]]
    assert len(ids) == 10
    return ids


def test_truncate_is_the_tokenizer():
    assert ours("truncate") == {tuple(tokenize([CAPTION], CONTEXT)[0])}


def test_block_reaches_every_window_as_openclip():
    ids = caption_ids()
    windows = rows(ids[s:s + CONTEXT - 2] for s in range(len(ids) - (CONTEXT - 2) + 1))
    assert ours("block") == windows == openclip_outputs("simple_mask_tokenize")


def test_random_reaches_every_ordered_subset_as_openclip():
    ids = caption_ids()
    subsets = rows([ids[i] for i in keep]
                   for keep in itertools.combinations(range(len(ids)), CONTEXT - 2))
    assert len(subsets) == 210
    got = ours("random", draws=5000)
    assert got == subsets
    assert openclip_outputs("random_mask_tokenize") <= subsets


def test_subcaption_takes_ordered_sentence_subsets():
    caption = "A dog runs. The sky is blue! Two cats sleep on a mat."
    sentences = split_sentences(caption)
    assert sentences == ["A dog runs.", "The sky is blue!", "Two cats sleep on a mat."]
    context = 12
    expected = {tuple(tokenize([" ".join(sentences[i] for i in pick)], context)[0])
                for n in range(1, 4) for pick in itertools.combinations(range(3), n)}
    assert ours("subcaption", caption, context, draws=300) == expected


@pytest.mark.parametrize("mode", text_reduction.MODES)
def test_short_captions_are_kept_whole(mode):
    short = "A red ball. A blue cube."
    assert ours(mode, short, 16, draws=20) == {tuple(tokenize([short], 16)[0])}


def test_unknown_mode_names_the_key():
    with pytest.raises(ValueError, match=r"data\.text_reduction='mask'.*block"):
        text_reduction.check_mode("mask")
