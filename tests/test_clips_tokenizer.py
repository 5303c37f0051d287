"""CLIPS's tokenizer layout (REFERENCE 4.1) against a direct implementation of it: open_clip's
cleaning, transformers' pure-Python `BertTokenizer` for the WordPiece ids (ours runs the Rust
`tokenizers` one), and CLIPS's `CustomTokenizer` row layout written out as its code does. The
WordPiece vocab.txt is built here, laid out as bert-base-uncased's (ids 0..103 special)."""
import numpy as np
import pytest

from synthclip_jax.data import clips_tokenizer as ct
from synthclip_jax.data.text_reduction import tokenize_reduced
from synthclip_jax.data.text_tokenizer import get_text_tokenizer

transformers = pytest.importorskip("transformers")
open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

WORDS = ("a photo of the large red dog sitting on green grass next to small house with two "
         "cats under blue sky playing running jumping painting drawing sculpture origami video "
         "game art itap bad cafe naive resume tokyo zebra apple banana").split()
SUFFIXES = ("##s", "##ing", "##ed", "##er", "##est", "##ly")


def write_vocab(path, words=WORDS) -> str:
    """A vocab.txt laid out as bert-base-uncased's (ids 0..103 special) with `words`."""
    specials = (["[PAD]"] + [f"[unused{i}]" for i in range(99)]
                + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()&/") + ["日", "本"]
    tokens = specials + chars + ["##" + c for c in chars[:36]] + list(SUFFIXES) + list(words)
    assert tokens.index("[CLS]") == ct.CLS_ID and tokens.index("[unused0]") == ct.BOS_ID
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


def random_texts(n, seed=0):
    rng = np.random.default_rng(seed)
    extras = ["Café", "NAÏVE", "résumé", "&amp;", "&lt;b&gt;", "日本", "xyzzyq", "ZEBRAS",
              "  ", "\t", "\n", "!!", "(test)", "dog's", "1234567", "ö", "—"]
    pool = list(WORDS) + [w.upper() for w in WORDS[:10]] + [w + "ing" for w in WORDS[:10]] + extras
    texts = []
    for _ in range(n):
        length = int(rng.choice([0, 1, 3, 8, 20, 90]))  # 90 words: truncated at context 80
        words = rng.choice(pool, size=length)
        texts.append((" " if rng.random() < 0.8 else "").join(words))
    return texts


def reference_rows(texts, vocab_path, context_length):
    """CLIPS's CLIPS_Tokenizer + CustomTokenizer, written out with slow-BERT ids."""
    bert = transformers.BertTokenizer(vocab_path, do_lower_case=True)
    rows = []
    for text in texts:
        text = open_clip_tokenizer.whitespace_clean(open_clip_tokenizer.basic_clean(text))
        ids = bert.convert_tokens_to_ids(bert.tokenize(text))
        encoded = [1] + ids[:context_length - 3] + [2]
        if len(encoded) < context_length - 1:
            encoded += [0] * (context_length - 1 - len(encoded))
        rows.append(encoded + [101])
    return np.array(rows, np.int32)


@pytest.mark.parametrize("context_length", [80, 12])
def test_layout_matches_direct_implementation(vocab_path, context_length):
    texts = random_texts(3000)
    ours = get_text_tokenizer("clips_wordpiece", vocab_path)(texts, context_length)
    ref = reference_rows(texts, vocab_path, context_length)
    assert ours.shape == ref.shape == (3000, context_length)
    bad = np.flatnonzero((ours != ref).any(axis=1))
    assert not len(bad), [(texts[i], ours[i].tolist(), ref[i].tolist()) for i in bad[:3]]
    assert (ours[:, -1] == ct.CLS_ID).all() and (ours[:, 0] == ct.BOS_ID).all()
    assert (ours == ct.EOS_ID).sum(axis=1).min() == 1  # EOS kept on truncation too


def test_reduction_keeps_the_layout(vocab_path):
    tok = get_text_tokenizer("clips_wordpiece", vocab_path)
    caption = " ".join(WORDS)  # 40 known words, one id each
    ids = tok.encode(caption)
    rng = np.random.default_rng(0)
    for mode in ("truncate", "block", "random"):
        row = tokenize_reduced(caption, mode, 10, rng, tok)
        assert row[0] == ct.BOS_ID and row[8] == ct.EOS_ID and row[9] == ct.CLS_ID
        kept = list(row[1:8])
        if mode == "truncate":
            assert kept == ids[:7]
        elif mode == "block":
            start = ids.index(kept[0])
            assert kept == ids[start:start + 7]
        else:  # in order, a subset
            positions = [ids.index(t) for t in kept]
            assert positions == sorted(positions)


def test_training_and_evaluation_use_the_configured_tokenizer(vocab_path, tmp_path):
    from synthclip_jax.data import pipeline
    from synthclip_jax.data.shard_files import TFRecordShards
    from synthclip_jax.data.text_tokenizer import tokenizer_of
    from synthclip_jax.evaluate import zeroshot
    from synthclip_jax.evaluate.retrieval import RetrievalSet
    from synthclip_jax.config.base import base
    from tests.test_pipeline import write_dataset

    config = base()
    config.model.text.update(tokenizer="clips_wordpiece", vocab_path=vocab_path)
    tok = tokenizer_of(config.model.text)
    pattern = write_dataset(tmp_path, n=2, num_shards=1)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    load = pipeline.LoadExample(TFRecordShards(pattern), 16, 12,
                                tokenizer=("clips_wordpiece", vocab_path))
    text = load.random_map(0, np.random.default_rng(0))["text"]
    assert text.tolist() in (tok(["photo 0"], 12)[0].tolist(), tok(["picture 0"], 12)[0].tolist())
    evaluate = RetrievalSet(pattern, 16, mean, std, 12, tokenizer=tok)
    np.testing.assert_array_equal(evaluate.tokens[:2], tok(["photo 0", "picture 0"], 12))

    class Encoder:  # the real encoder needs a model; this one records the prompts' tokens
        def texts(self, params, tokens):
            self.tokens = tokens
            return np.ones((len(tokens), 4), np.float32)

    encoder = Encoder()
    zeroshot.classifier(encoder, None, ["dog"], "simple", 12, tok)
    assert (encoder.tokens[:, -1] == ct.CLS_ID).all()


def test_captioner_targets_in_either_tokenizer(vocab_path):
    """The captioner's target rows: WordPiece = CLIPS's row one longer without its last slot
    (the [CLS] pooling token is no word of the caption); BPE = open_clip's own row."""
    from open_clip import get_tokenizer as open_clip_get_tokenizer
    from synthclip_jax.data.text_tokenizer import caption_targets
    texts = random_texts(200, seed=1)
    tok = get_text_tokenizer("clips_wordpiece", vocab_path)
    np.testing.assert_array_equal(caption_targets(tok, texts, 12),
                                  reference_rows(texts, vocab_path, 13)[:, :12])
    bpe = get_text_tokenizer("openclip_bpe")
    np.testing.assert_array_equal(caption_targets(bpe, texts, 12),
                                  open_clip_get_tokenizer("ViT-B-16")(texts, 12).numpy())
