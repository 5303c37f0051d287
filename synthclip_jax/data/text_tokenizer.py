"""The text tokenizer a config chooses (`model.text.tokenizer`), for training and evaluation.

  openclip_bpe     OpenAI BPE, token-for-token OpenCLIP's default (`tokenizer.py`); vocab 49408.
  clips_wordpiece  CLIPS's BERT WordPiece layout (`clips_tokenizer.py`) on
                   `model.text.vocab_path`.

Both have `encode_batch(texts)`, `row(ids, context_length)`, `content_length(context_length)` and
`__call__(texts, context_length) -> int32 (N, context_length)`.
"""
from synthclip_jax.data.clips_tokenizer import get_clips_tokenizer
from synthclip_jax.data.tokenizer import get_tokenizer


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
