"""tokenize() vs OpenCLIP's own tokenizer, token for token, on a few thousand seeded strings."""
import functools
import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from synthclip_jax.data import tokenizer as tk

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip_torch is the reference these tests compare against")


@functools.lru_cache(maxsize=None)
def _ref():
    return open_clip.get_tokenizer("ViT-B-16")


WORDS = ("a photo of the cat dog on in with red blue small large wooden table street night "
         "painting close-up portrait landscape beautiful colorful detailed city car tree "
         "woman man child bird flower sunset mountain river old new").split()
SPECIAL_CASES = [
    # empty, whitespace-only, punctuation-only
    "", " ", "\t\n  \r\n", "\u3000\xa0", "!!!", "...", "?!?!", "—–-", "()[]{}<>", "'", "''s",
    # contractions (open_clip's regex is case-insensitive; U+017F long s folds to s)
    "it's don't we're they've I'm we'll he'd", "IT'S DON'T WE'RE THEY'VE I'M WE'LL HE'D",
    "'s 't 're 've 'm 'll 'd 'S 'T 'ſ", "rock'n'roll o'clock ’s",
    # numbers
    "1234567890 3.14 1,000,000 2nd", "½ ① Ⅻ ٣٤ １２３ ²",
    # unicode: accents (composed and not), CJK, emoji, RTL, combining marks, zero-width chars
    "café naïve cafe\u0301 Ångström", "猫の写真 高清 고양이 사진", "🐱🐶 👩‍👩‍👧 🇫🇷 👍🏽 ❤️",
    "مرحبا بالعالم שלום עולם", "Z̤͔ͧ̑̓ä̸̡ l̴g̶o", "zero\u200bwidth\u200d\ufeffjoin",
    "a\u0345b \u1fb3 \u0345", "ſtraße STRASSE İstanbul ıi ΣΊΣΥΦΟΣ ﬁne ＡＢＣ",
    # HTML entities (ftfy unescapes unless '<' is present; then html.unescape twice)
    "&amp; &lt;b&gt; &amp;amp; &#39; &quot;x&quot; &nbsp;", "&amp;lt;3 &amp;amp;amp;",
    "<p>&amp;amp;amp; &lt;3 &amp</p>",
    # mojibake and control characters that ftfy repairs or removes
    "cafÃ© Ã¢â‚¬â„¢ The Mona Lisa doesnÃ¢â‚¬â„¢t", "\x1b[31mred\x1b[0m \x00\x1c\x7f",
    # literal special tokens: special ids only where open_clip's regex splits them off
    "<start_of_text>", "<END_OF_TEXT>", "x!<end_of_text>y <start_of_text><end_of_text>",
    "(<start_of_text>) a<start_of_text>b <ſtart_of_text>",
    # repeats (overlapping merges) and very long captions (truncation)
    "aaaaaaaaaaaaaaaa abababababab llllll", "word " * 100, "a" * 500, "7" * 200, "!?" * 100,
    "supercalifragilisticexpialidocious " * 10,
]
# Code points assigned in Unicode 3.2 (a fixed table in every Python): their letter/number classes
# are stable, unlike code points new in the latest Unicode, where open_clip's answer depends on
# the installed `regex` version (see the note in tokenizer.py).
_POOL = [chr(c) for c in range(0x20, 0x30000)
         if unicodedata.ucd_3_2_0.category(chr(c)) not in ("Cn", "Cs", "Co")]
_PIECES = ["'s", "'t", "'re", "'ll", "&amp;", "&lt;", "&gt;", "\t", "\n", "  ", "...", "!!", "Ã©",
           "🙂", "👩‍💻", "\u200b", "\u0301", "\u0345", "ſ", "<start_of_text>", "<end_of_text>"]


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:  # SynthCLIP-like caption
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        return text.capitalize() + rng.choice([".", "", ",", "!", " ..."])
    if kind < 0.55:  # caption with mixed-in tricky pieces and casing
        parts = [rng.choice(WORDS + _PIECES) for _ in range(rng.randint(1, 25))]
        parts = [p.upper() if rng.random() < 0.2 else p for p in parts]
        return rng.choice(["", " ", "\t"]).join(parts)
    if kind < 0.65:  # mojibake that ftfy repairs
        words = WORDS + ["café", "naïve", "señor", "it’s", "“quoted”"]
        text = " ".join(rng.choice(words) for _ in range(8))
        return text.encode("utf-8").decode(rng.choice(["latin-1", "cp1252"]), errors="replace")
    if kind < 0.75:  # digits and punctuation runs
        chars = "0123456789.,;:!?-_/()'\"#$%^&*+= "
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 60)))
    # random unicode soup
    return "".join(rng.choice(_POOL) if rng.random() < 0.7 else rng.choice(_PIECES + [" "])
                   for _ in range(rng.randint(0, 80)))


@functools.lru_cache(maxsize=None)
def _corpus(n: int = 3000, seed: int = 0):
    rng = random.Random(seed)
    return SPECIAL_CASES + [_random_text(rng) for _ in range(n)]


@pytest.mark.parametrize("context_length", [16, 77])
def test_matches_open_clip(context_length):
    texts = _corpus()
    ours = tk.tokenize(texts, context_length)
    ref = _ref()(texts, context_length=context_length).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(texts), context_length)
    bad = np.nonzero((ours != ref).any(axis=1))[0]
    assert len(bad) == 0, [(texts[i], ours[i].tolist(), ref[i].tolist()) for i in bad[:5]]
    # Truncation happened on some rows and kept EOT last in exactly context_length tokens.
    full = ours[:, -1] != tk.PAD_ID
    assert full.sum() > 10 and (ours[full, -1] == tk.EOT_ID).all()
    assert (ours[:, 0] == tk.SOT_ID).all()


def test_default_and_odd_context_lengths_and_single_string():
    texts = _corpus()[:300]
    np.testing.assert_array_equal(tk.tokenize(texts), _ref()(texts).numpy())
    for length in (1, 2, 3, 100):
        ref = _ref()(texts, context_length=length).numpy()
        np.testing.assert_array_equal(tk.tokenize(texts, length), ref)
    one = tk.tokenize("A photo of a CAT, it's cute!")
    assert one.dtype == np.int32 and one.shape == (1, 77)
    np.testing.assert_array_equal(one, _ref()("A photo of a CAT, it's cute!").numpy())
    assert tk.tokenize([]).shape == (0, 77)


def test_bpe_merges_on_vocab_words_and_repeats():
    # Merge results used as words, plus runs of one or two symbols (overlapping merges).
    rng = random.Random(1)
    ref = _ref()
    words = [w.replace("</w>", "") for w in rng.sample(list(ref.encoder)[512:49406], 2000)]
    words += ["".join(rng.choice(ab) for _ in range(rng.randint(1, 24)))
              for ab in ("ab", "lo", "es", "aa", "xyz") for _ in range(60)]
    np.testing.assert_array_equal(tk.tokenize(words), ref(words).numpy())


def test_constants_and_decode():
    t = tk.get_tokenizer()
    ref = _ref()
    assert (tk.VOCAB_SIZE, tk.SOT_ID, tk.EOT_ID) == (
        ref.vocab_size, ref.sot_token_id, ref.eot_token_id)
    assert tk.bytes_to_unicode() == open_clip.tokenizer.bytes_to_unicode()
    assert t.vocab == ref.encoder and tk.get_tokenizer() is t
    for text in _corpus()[:200]:
        assert t.encode(text) == ref.encode(text)
        ids = tk.tokenize(text)[0]
        assert t.decode(ids) == ref.decode(ids.tolist())


def test_no_torch_or_open_clip_import():
    code = ("import sys; from synthclip_jax.data.tokenizer import tokenize; tokenize(['a cat']); "
            "assert not {'torch', 'open_clip'} & set(sys.modules), 'tokenizer pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
