"""What the CLIPS captioner and the second caption cost per train step, against the plain step.

  python -m tools.bench.captioner_step [--steps 20] [--batch 64] [--vocab-size N]

Compiles the trainer's own step (`make_train_step`, one CPU device) for configs/clips_cpu.py
three ways on the same batch: plain (one caption, no captioner), two captions, and two captions
+ captioner (the whole config), and prints the median step time of each and its ratio to the
plain step. The ratio is what `metrics.jsonl`'s step_sec shows between such runs.
"""
import argparse

import jax
import numpy as np

from synthclip_jax import sharding
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tools.bench.mesh_efficiency import median_step_ms

VARIANTS = {"plain": (False, False), "two_captions": (True, False),
            "two_captions+captioner": (True, True)}


def token_rows(rng, n, length, words, vocab_size):
    """start, `words` random ids, end, padding (start/end: the vocabulary's last two ids, as
    BPE's SOT/EOT; the step's cost does not depend on which ids)."""
    rows = np.zeros((n, length), np.int32)
    k = min(words, length - 2)
    rows[:, 0], rows[:, k + 1] = vocab_size - 2, vocab_size - 1
    rows[:, 1:k + 1] = rng.integers(1, vocab_size - 2, (n, k))
    return rows


def batch_for(config, batch_size):
    """Pairs shaped as configs/clips_cpu.py's: a 3-word web caption, an 8-token partial
    caption, a 17-token full caption."""
    rng = np.random.default_rng(0)
    size, length = config.data.image_size, config.model.text.context_length
    vocab = config.model.text.vocab_size
    return {"image": rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
            "text": token_rows(rng, batch_size, length, 8, vocab),
            "web_text": token_rows(rng, batch_size, length, 3, vocab),
            "caption": token_rows(rng, batch_size, config.model.captioner.num_queries + 1, 17,
                                  vocab)}


def clips_step_ms(config, batch_size, steps):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    host = batch_for(config, batch_size)
    if not (config.loss.two_captions or config.model.captioner.enabled):
        host = {"image": host["image"], "text": host["text"]}
    return median_step_ms(make_train_step(config, setup, mesh), setup.init(),
                          sharding.global_batch(host, mesh), steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--vocab-size", type=int, default=0,
                   help="text vocabulary (and captioner head); 0 = the config's (BPE, 49408); "
                        "e.g. 238 = the WordPiece vocab of tools/bench/clips_ablation.py")
    args = p.parse_args(argv)
    from configs.clips_cpu import get_config
    results = {}
    for name, (two, captioner) in VARIANTS.items():
        config = get_config()
        config.batch_size = args.batch
        config.model.text.vocab_size = args.vocab_size or config.model.text.vocab_size
        config.mesh.data = 1
        config.loss.two_captions, config.model.captioner.enabled = two, captioner
        results[name] = clips_step_ms(config, args.batch, args.steps)
        print(f"{name:24s} {results[name]:8.1f} ms/step  ratio vs plain = "
              f"{results[name] / results['plain']:.2f}", flush=True)
    print(f"ratio clips/plain = {results['two_captions+captioner'] / results['plain']:.2f}")


if __name__ == "__main__":
    main()
