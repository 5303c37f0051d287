"""The `tf.train.Example` schema of image-caption records: the one place it lives.

Example features: image (bytes, one JPEG), caption (bytes, one or more UTF-8 strings),
key (bytes, one), optional concept (int64 list), source (bytes, one), label (int64, one: the
class of a zero-shot / linear-probe evaluation record), and web_caption (bytes, one UTF-8
string; written only when non-empty): CLIPS's second caption role, the short web alt-text
beside the long synthetic `caption` (see data/pipeline.py, where a record without one uses
its `caption` in both roles).

The files that hold these records (framing, CRC, index, writer, reader): shard_files.py.
"""
from typing import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from synthclip_jax.data.shard_files import CorruptRecordError


def _example_class():
    """tf.train.Example (tensorflow/core/example/{feature,example}.proto), wire-identical.

    Built in a private descriptor pool rather than imported from a generated example_pb2 (e.g.
    the `tfrecord` package's): those register `tensorflow.Example` in protobuf's default pool,
    and TensorFlow itself (TFDS eval sets) then fails to import with "duplicate symbol".
    """
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="synthclip_jax/example.proto", package="tensorflow", syntax="proto3")

    def message(parent, name, *fields):
        m = parent.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, 1):
            m.field.add(name=fname, number=number, type=ftype, label=label,
                        **({"type_name": type_name} if type_name else {}))
        return m

    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    message(proto.message_type, "BytesList", ("value", f.TYPE_BYTES, rep, ""))
    message(proto.message_type, "FloatList", ("value", f.TYPE_FLOAT, rep, ""))
    message(proto.message_type, "Int64List", ("value", f.TYPE_INT64, rep, ""))
    feature = message(proto.message_type, "Feature",
                      *[(k, f.TYPE_MESSAGE, opt, f".tensorflow.{t}") for k, t in
                        [("bytes_list", "BytesList"), ("float_list", "FloatList"),
                         ("int64_list", "Int64List")]])
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message(proto.message_type, "Features",
                       ("feature", f.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry"))
    entry = message(features.nested_type, "FeatureEntry", ("key", f.TYPE_STRING, opt, ""),
                    ("value", f.TYPE_MESSAGE, opt, ".tensorflow.Feature"))
    entry.options.map_entry = True
    message(proto.message_type, "Example",
            ("features", f.TYPE_MESSAGE, opt, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


def encode_example(*, image: bytes, captions: Sequence[str], key: str,
                   concepts: Sequence[int] = (), source: str = "",
                   web_caption: str = "", label: int | None = None) -> bytes:
    if isinstance(captions, (str, bytes)) or not captions or not all(
            isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"captions must be a non-empty list of non-empty str, got {captions!r}")
    if not image:
        raise ValueError(f"empty image for key {key!r}")
    ex = Example()
    f = ex.features.feature
    f["image"].bytes_list.value.append(bytes(image))
    f["caption"].bytes_list.value.extend(c.encode("utf-8") for c in captions)
    f["key"].bytes_list.value.append(key.encode("utf-8"))
    if len(concepts):
        f["concept"].int64_list.value.extend(int(c) for c in concepts)
    if source:
        f["source"].bytes_list.value.append(source.encode("utf-8"))
    if web_caption.strip():  # CLIPS's second caption role; absent when empty
        f["web_caption"].bytes_list.value.append(web_caption.encode("utf-8"))
    if label is not None:
        f["label"].int64_list.value.append(int(label))
    # Features is a map: deterministic=True sorts keys, so equal inputs give equal bytes.
    return ex.SerializeToString(deterministic=True)


def decode_example(serialized: bytes, *, where: str = "") -> dict:
    def bad(msg):
        return CorruptRecordError(f"{where or 'record'}: {msg}")

    try:
        f = Example.FromString(serialized).features.feature
    except DecodeError as e:
        raise bad(f"not a tf.train.Example ({e})") from None

    def values(name, kind, required):
        if name not in f:
            if required:
                raise bad(f"missing feature {name!r}")
            return []
        if f[name].WhichOneof("kind") != kind:
            raise bad(f"feature {name!r} is {f[name].WhichOneof('kind')}, expected {kind}")
        return list(getattr(f[name], kind).value)

    def text(b, name):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{name} is not valid UTF-8: {b[:40]!r}") from None

    images = values("image", "bytes_list", True)
    if len(images) != 1 or not images[0]:
        raise bad(f"expected one non-empty image, got {len(images)}")
    captions = [text(c, "caption") for c in values("caption", "bytes_list", True)]
    if not captions or not all(c.strip() for c in captions):
        raise bad(f"empty caption in {captions!r}")
    keys, sources = values("key", "bytes_list", False), values("source", "bytes_list", False)
    web = values("web_caption", "bytes_list", False)
    if len(web) > 1:
        raise bad(f"expected at most one web_caption, got {len(web)}")
    labels = values("label", "int64_list", False)
    return {"image": images[0], "captions": captions,
            "key": text(keys[0], "key") if keys else "",
            "concepts": [int(c) for c in values("concept", "int64_list", False)],
            "source": text(sources[0], "source") if sources else "",
            "web_caption": text(web[0], "web_caption") if web else "",
            "label": int(labels[0]) if labels else None}


if __name__ == "__main__":  # the index CLI's old name, kept: it now lives in shard_files.py
    from synthclip_jax.data import shard_files

    shard_files.main()
