"""Our JAX evaluators and OpenCLIP on the exported model agree on zero-shot top-1 and R@1.

The OpenCLIP side is computed independently here: its own tokenizer, its own forward, and the
metrics written out directly in NumPy from its features.
"""
import json

import jax
import numpy as np
import pytest

from synthclip_jax.evaluate import retrieval, zeroshot
from synthclip_jax.evaluate.templates import templates
from synthclip_jax.export.openclip import export_openclip
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import load_params
from tests.test_evaluate import training_with_eval_config

torch = pytest.importorskip("torch", reason="OpenCLIP cross-check needs torch")
open_clip = pytest.importorskip("open_clip", reason="OpenCLIP cross-check needs open_clip_torch")


def openclip_features(model, tokenizer, images_nhwc, texts):
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()),
                                 normalize=True).numpy()
        txt = model.encode_text(tokenizer(texts), normalize=True).numpy()
    return img, txt


@pytest.mark.slow
def test_zeroshot_and_retrieval_agree_with_openclip(tmp_path):
    config = training_with_eval_config(tmp_path, (1, 1, 1), total_steps=30, eval_every=30)
    zs_root, pattern = config.eval.zeroshot, config.eval.retrieval
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    loop.train(config, workdir, devices=jax.devices()[:1])
    ours = json.loads((workdir / "eval.jsonl").read_text().splitlines()[-1])

    config, params, _ = load_params(workdir)
    export_openclip(config, params, tmp_path / "openclip")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'openclip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'openclip'}")
    model.eval()

    # Zero-shot: the same preprocessed images; classifier from OpenCLIP's text features.
    zs = zeroshot.ZeroShotSet(zs_root, 32, config.data.mean, config.data.std)
    prompts = [t.format(c) for c in zs.classnames for t in templates("simple")]
    img, txt = openclip_features(model, tokenizer, zs.images, prompts)
    classes = txt.reshape(len(zs.classnames), -1, txt.shape[-1]).mean(1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    top1 = float(np.mean(np.argmax(img @ classes.T, axis=1) == zs.labels))
    assert ours["zeroshot/top1"] == pytest.approx(top1)

    # Retrieval R@1 both ways, written out directly.
    rs = retrieval.RetrievalSet(pattern, 32, config.data.mean, config.data.std, 16)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(rs.images.transpose(0, 3, 1, 2).copy()),
                                 normalize=True).numpy()
        txt = model.encode_text(torch.from_numpy(rs.tokens.astype(np.int64)),
                                normalize=True).numpy()
    sim = img @ txt.T
    i2t = np.mean(rs.caption_image[np.argmax(sim, axis=1)] == np.arange(len(img)))
    t2i = np.mean(np.argmax(sim, axis=0) == rs.caption_image)
    assert ours["retrieval/i2t_R@1"] == pytest.approx(i2t)
    assert ours["retrieval/t2i_R@1"] == pytest.approx(t2i)
    assert 0 < top1 < 1 and 0 < t2i < 1  # informative, not trivially 0 or 1
