"""The evaluation suite: TFDS datasets built on disk with TFDS's own builder API (array_record,
no TensorFlow, no network) read back by `tfds:` name and by directory, equal to the ImageFolder
and TFRecord paths on the same images and to a direct NumPy computation; named metric keys;
Recall@K; the per-process split; the best checkpoint across a resume."""
import io

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from synthclip_jax import sharding
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.evaluate import retrieval, sources, stream, suite, zeroshot
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.models.two_tower import build_model
from tests.test_train_parallel import tiny_train_config

tfds = pytest.importorskip("tensorflow_datasets")

COLORS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 30)}
SIZE = 32


def image_bytes(color, i, fmt="PNG"):
    rng = np.random.default_rng(i)
    pixels = np.clip(np.asarray(color) + rng.normal(0, 40, (SIZE + i % 5, SIZE, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def write_sets(root, n=20):
    """The same n images as an ImageFolder, labelled TFRecord shards and captioned shards."""
    names = sorted(COLORS)
    items = [(names[i % 3], i, image_bytes(COLORS[names[i % 3]], i)) for i in range(n)]
    for color, i, data in items:
        (root / "folder" / color).mkdir(parents=True, exist_ok=True)
        (root / "folder" / color / f"{i:03d}.png").write_bytes(data)
    (root / "labelled").mkdir()
    (root / "labelled" / "classnames.txt").write_text("\n".join(names))
    with ShardWriter(str(root / "labelled" / shard_name("zs", 0, 1))) as writer:
        for color, i, data in items:
            writer.write(encode_example(image=data, captions=[color], key=str(i),
                                        label=names.index(color)))
    (root / "captioned").mkdir()
    with ShardWriter(str(root / "captioned" / shard_name("rt", 0, 1))) as writer:
        for color, i, data in items:
            writer.write(encode_example(image=data, key=str(i), captions=captions(color, i)))
    return items


def captions(color, i):
    return [f"a {color} picture number {i}", f"{color} {i}"][: 1 + i % 2]


def build_tfds(data_dir, items):
    """Two TFDS datasets (classification and captions) prepared with TFDS's builder API in
    array_record format; not registered, so reading them goes through the files alone."""
    names = sorted(COLORS)
    with tfds.core.registered.skip_registration():
        class EvalColors(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=names)}))

            def _split_generators(self, dl_manager):
                return {"test": self._generate_examples()}

            def _generate_examples(self):
                for color, i, data in items:  # encoded bytes go in as they are
                    yield i, {"image": io.BytesIO(data), "label": names.index(color)}

        class EvalCaptions(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "captions": tfds.features.Sequence(tfds.features.Text())}))

            def _split_generators(self, dl_manager):
                return {"test": self._generate_examples()}

            def _generate_examples(self):
                for color, i, data in items:
                    yield i, {"image": io.BytesIO(data), "captions": captions(color, i)}

    for builder in (EvalColors, EvalCaptions):
        builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    items = write_sets(root)
    build_tfds(root / "tfds", items)
    config = tiny_train_config("softmax", (8, 1, 1))
    config.model.text.update(vocab_size=49408, context_length=16)
    config.data.image_size = SIZE
    model = build_model(config, 3)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(nnx.graphdef(model), mesh, batch_size=8)
    return root, items, config, model, encoder, nnx.to_pure_dict(nnx.state(model))


def test_tfds_and_tfrecord_sources_equal_imagefolder_and_direct_numpy(sets):
    root, items, config, model, encoder, params = sets
    d = config.data
    specs = {"folder": str(root / "folder"),
             "labelled": str(root / "labelled" / "*.tfrecord"),
             "by_name": "tfds:eval_colors:1.0.0/test",
             "by_dir": str(root / "tfds" / "eval_colors" / "1.0.0" / "test")}
    got = {}
    for name, source in specs.items():
        data = zeroshot.ZeroShotSet(source, SIZE, d.mean, d.std, name=name,
                                    tfds_data_dir=str(root / "tfds"))
        assert data.classnames == sorted(COLORS)
        out = zeroshot.evaluate(encoder, params, data, "simple", 16)
        got[name] = {k.split("/")[-1]: v for k, v in out.items()}
        assert set(out) == {f"zeroshot/{name}/top1", f"zeroshot/{name}/top5",
                            f"zeroshot/{name}/ce", f"zeroshot/{name}/chance_top1"}
    # Direct: decode every image with PIL, encode, nearest normalised prompt embedding.
    folder = zeroshot.ZeroShotSet(specs["folder"], SIZE, d.mean, d.std)
    weights = np.asarray(model.encode_text(tokenize([f"a photo of a {c}." for c in
                                                      sorted(COLORS)], 16)))
    cosines = np.asarray(model.encode_image(folder.images)) @ weights.T
    pred = np.argmax(cosines, axis=1)
    labels = folder.labels  # the order of folder.images (class folder by class folder)
    assert sorted(labels) == sorted(sorted(COLORS).index(c) for c, _, _ in items)
    top1 = np.mean(pred == labels)
    assert 0 < top1 < 1  # informative
    # the Scaling-laws seed's mean CE of logit_scale * logits (torch F.cross_entropy's formula)
    z = np.exp(float(model.logit_scale[...])) * cosines.astype(np.float64)
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels])
    assert got["folder"]["ce"] == pytest.approx(ce, rel=1e-4)
    for name in specs:
        assert got[name]["top1"] == pytest.approx(top1), name
        assert got[name] == pytest.approx(got["folder"]), name


def test_retrieval_from_tfds_equals_tfrecord_and_brute_force(sets):
    root, items, config, model, encoder, params = sets
    d, ks = config.data, (1, 2, 50)
    results = []
    for source in (str(root / "captioned" / "*.tfrecord"), "tfds:eval_captions/test"):
        data = retrieval.RetrievalSet(source, SIZE, d.mean, d.std, 16, name="rt",
                                      tfds_data_dir=str(root / "tfds"))
        results.append(retrieval.evaluate(encoder, params, data, ks))
    assert results[0] == pytest.approx(results[1])
    assert {f"retrieval/rt/{w}_R@{k}" for w in ("i2t", "t2i") for k in ks} < set(results[0])
    # Brute force on the direct forward: image i's captions vs all captions.
    texts = [c for color, i, _ in items for c in captions(color, i)]
    owner = np.asarray([i for color, i, _ in items for _ in captions(color, i)])
    images = zeroshot.ZeroShotSet(str(root / "folder"), SIZE, d.mean, d.std)
    order = np.argsort([int(p.stem) for p in images.reader.paths])  # folder order -> i
    img = np.asarray(model.encode_image(images.images))[order]
    sim = img @ np.asarray(model.encode_text(tokenize(texts, 16))).T
    i2t = np.mean([owner[np.argmax(sim[i])] == i for i in range(len(items))])
    t2i = np.mean(np.argmax(sim, axis=0) == owner)
    assert results[0]["retrieval/rt/i2t_R@1"] == pytest.approx(i2t)
    assert results[0]["retrieval/rt/t2i_R@1"] == pytest.approx(t2i)
    assert results[0]["retrieval/rt/i2t_R@50"] == 1.0


def test_unprepared_or_misnamed_tfds_sources_fail_clearly(sets, tmp_path):
    root = sets[0]
    with pytest.raises(FileNotFoundError, match="never downloads|no TFDS dataset"):
        sources.open_source("tfds:eval_colors/test", str(tmp_path))
    with pytest.raises(ValueError, match="no split 'validation'"):
        sources.open_source("tfds:eval_colors/validation", str(root / "tfds"))
    with pytest.raises(ValueError, match="no label feature"):
        sources.open_source("tfds:eval_captions/test", str(root / "tfds"), task="zeroshot")


def test_specs_parse_names_and_reject_ambiguity():
    assert sources.parse_specs("/data/zs") == [(None, "/data/zs")]
    assert sources.parse_specs("in=tfds:imagenet2012:5.1.0/validation;c10=/x/*.tfrecord") == [
        ("in", "tfds:imagenet2012:5.1.0/validation"), ("c10", "/x/*.tfrecord")]
    assert sources.parse_probe_specs("c=tfds:cifar10/train,tfds:cifar10/test") == [
        ("c", "tfds:cifar10/train", "tfds:cifar10/test")]
    with pytest.raises(ValueError, match="each need a name"):
        sources.parse_specs("a=/x,/y")
    with pytest.raises(ValueError, match="appears twice"):
        sources.parse_specs("a=/x,a=/y")


def test_suite_names_and_templates():
    assert len(suite.classnames("imagenet2012")) == 1000
    assert suite.classnames("oxford_iiit_pet")[0] == "Abyssinian"
    assert len(suite.classnames("sun397") or []) == 0  # from the TFDS label names instead
    assert suite.templates("cifar10")[0] == "a photo of a {}."
    assert len(suite.templates("imagenet")) == 80


@pytest.mark.parametrize("n,batch,processes", [(20, 8, 2), (7, 8, 4), (16, 4, 1), (1, 8, 8)])
def test_process_split_covers_every_record_once_in_whole_batches(n, batch, processes):
    parts = [stream.local_indices(n, batch, p, processes) for p in range(processes)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % (batch // processes) == 0
    real = np.concatenate([p[p >= 0] for p in parts])
    assert sorted(real) == list(range(n))
