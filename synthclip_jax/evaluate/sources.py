"""Evaluation datasets: named specs (`NAME=SOURCE`) and random-access readers of their records.

SOURCE is one of
  * a folder of class sub-folders of images (ImageFolder; `classnames.txt` in it optional),
  * a glob of our TFRecord shards (`*.tfrecord`; zero-shot records carry an int64 `label`,
    class names in `classnames.txt` beside the shards; every caption is a retrieval query),
  * `tfds:NAME[:VERSION]/SPLIT`: a TFDS dataset prepared in the TFDS data_dir
    (`eval.tfds_data_dir`, `--tfds-data-dir`, or TFDS's default ~/tensorflow_datasets),
  * `DIR/SPLIT` where DIR is a prepared TFDS dataset directory (it holds `dataset_info.json`),
    read without its builder code (`tfds.builder_from_directory`).
TFDS is read through `tfds.data_source` (random access over array_record files, no TensorFlow);
evaluation never downloads or prepares a dataset.

Every reader has `len()`, `record(i) -> (encoded image bytes, label or list of captions)`,
`where(i)` (what an error names) and, for classification, `classnames`. Readers hold no decoded
images: evaluation streams them (evaluate/stream.py).
"""
import re

import numpy as np
from etils import epath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TFDS_PREFIX = "tfds:"
NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# TFDS feature names tried in order (most image datasets use "image"/"label"; coco_captions
# has captions/text; some text-image sets use "caption" or "texts").
IMAGE_KEYS = ("image", "img")
LABEL_KEYS = ("label", "fine_label")
CAPTION_KEYS = ("captions", "caption", "texts", "text")


def parse_specs(value: str, key: str = "eval.zeroshot", separators: str = ",;") -> list:
    """'NAME=SOURCE,NAME2=SOURCE2' (or ';') -> [(name, source)]; a lone SOURCE without NAME= is
    the unnamed dataset (name None), whose metrics keep the keys without a name."""
    if not value:
        return []
    items = [s.strip() for s in re.split(f"[{re.escape(separators)}]", value) if s.strip()]
    specs = []
    for item in items:
        name, eq, source = item.partition("=")
        if eq and NAME.match(name.strip()) and source.strip():
            specs.append((name.strip(), source.strip()))
        elif not eq and len(items) == 1:
            specs.append((None, item))
        else:
            raise ValueError(f"{key}={value!r}: {item!r} is not NAME=SOURCE (several datasets "
                             "each need a name: NAME=SOURCE,NAME2=SOURCE2)")
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{key}={value!r}: a dataset name appears twice")
    return specs


def parse_probe_specs(value: str, key: str = "eval.linear_probe") -> list:
    """'NAME=TRAIN,TEST;NAME2=TRAIN2,TEST2' -> [(name, train_source, test_source)]."""
    out = []
    for name, sources in parse_specs(value, key, separators=";"):
        parts = [s.strip() for s in sources.split(",")]
        if name is None or len(parts) != 2 or not all(parts):
            raise ValueError(f"{key}={value!r}: expected NAME=TRAIN_SOURCE,TEST_SOURCE "
                             "(several separated by ';')")
        out.append((name, parts[0], parts[1]))
    return out


def source_kind(source: str) -> str:
    """'tfds' | 'tfds_dir' | 'tfrecord' | 'folder' from the SOURCE string alone (no I/O beyond
    one stat), so config_check can name a wrong path before any device work."""
    if source.startswith(TFDS_PREFIX):
        return "tfds"
    if "/" in source.rstrip("/"):
        parent = epath.Path(source.rstrip("/")).parent
        if "://" not in source and (parent / "dataset_info.json").exists():
            return "tfds_dir"
    if source.endswith(".tfrecord") or any(c in source for c in "*?["):
        return "tfrecord"
    return "folder"


def open_source(source: str, tfds_data_dir: str = "", task: str = "zeroshot"):
    kind = source_kind(source)
    if kind == "tfds" or kind == "tfds_dir":
        return TFDSReader(source, tfds_data_dir, task)
    if kind == "tfrecord":
        return TFRecordReader(source, task)
    return ImageFolderReader(source)


def read_classnames(path, count: int) -> list | None:
    if not path.exists():
        return None
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
    if len(names) != count:
        raise ValueError(f"{path} has {len(names)} names for {count} classes")
    return names


class ImageFolderReader:
    def __init__(self, root):
        root = epath.Path(root)  # local or gs://
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not folders:
            raise FileNotFoundError(f"{str(root)!r}: no class sub-folders found")
        self.classnames = (read_classnames(root / "classnames.txt", len(folders))
                           or [f.name.replace("_", " ") for f in folders])
        self.own_classnames = (root / "classnames.txt").exists()
        paths, labels = [], []
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise FileNotFoundError(f"{str(root)!r}: no images in class folders")
        self.paths, self.labels = paths, np.asarray(labels)

    def __len__(self):
        return len(self.paths)

    def where(self, i) -> str:
        return str(self.paths[i])

    def record(self, i):
        return self.paths[i].read_bytes(), int(self.labels[i])

    def check_headers(self):
        """Names an unreadable file now (reads each header only), not at the first evaluation."""
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image

        def check(path):
            try:
                with path.open("rb") as f, Image.open(f):
                    pass
            except (OSError, ValueError) as bad:
                raise ValueError(f"cannot decode {path}: {bad}; remove or replace the file") \
                    from bad

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(check, self.paths))


class TFRecordReader:
    def __init__(self, pattern: str, task: str):
        from synthclip_jax.data.shard_files import TFRecordShards, glob_shards
        self.shards = TFRecordShards(pattern)
        self.task = task
        self.classnames, self.own_classnames = None, False
        if task != "retrieval":
            parent = epath.Path(glob_shards(pattern)[0]).parent
            path = parent / "classnames.txt"
            if path.exists():
                self.classnames = [n.strip() for n in path.read_text().splitlines() if n.strip()]
                self.own_classnames = True

    def __len__(self):
        return len(self.shards)

    def where(self, i) -> str:
        path, offset = self.shards.location(i)
        return f"{path} at offset {offset}"

    def record(self, i):
        from synthclip_jax.data.tfrecord import decode_example
        example = decode_example(self.shards[i], where=self.where(i))
        if self.task == "retrieval":
            return example["image"], example["captions"]
        if example["label"] is None:
            raise ValueError(f"{self.where(i)}: no int64 'label' feature (zero-shot and linear "
                             "probe on TFRecords need one; write it with encode_example(label=))")
        return example["image"], example["label"]


def tfds_split(source: str, data_dir: str):
    """The TFDS builder and split of `tfds:NAME[:VERSION]/SPLIT` or `DIR/SPLIT` (no download)."""
    import tensorflow_datasets as tfds  # evaluation only: the trainer never imports TFDS

    if source.startswith(TFDS_PREFIX):
        name, slash, split = source[len(TFDS_PREFIX):].rpartition("/")
        if not slash or not name or not split:
            raise ValueError(f"{source!r}: expected tfds:NAME[:VERSION]/SPLIT")
        try:
            builder = tfds.builder(name, data_dir=data_dir or None)
        except Exception as bad:  # TFDS raises several kinds for an unknown name
            first_line = str(bad).splitlines()[0]
            raise FileNotFoundError(f"{source!r}: no TFDS dataset {name!r} in data_dir "
                                    f"{data_dir or '(TFDS default)'}: {first_line}") from bad
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"{source!r}: TFDS dataset {name!r} is not prepared in data_dir "
                f"{data_dir or '(TFDS default)'}; evaluation never downloads: run `tfds build "
                f"{name.split(':')[0]} --data_dir=DIR` on a machine with the data, then "
                "--tfds-data-dir=DIR / --config.eval.tfds_data_dir=DIR")
    else:
        directory, _, split = source.rstrip("/").rpartition("/")
        builder = tfds.builder_from_directory(directory)
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format and file_format != "array_record":
        raise ValueError(f"{source!r} is stored as {file_format}, which has no random access "
                         "(evaluation reads array_record without TensorFlow); rebuild it with "
                         "`tfds build ... --file_format=array_record`")
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(f"{source!r}: no split {split!r}; the dataset has "
                         f"{', '.join(builder.info.splits)}")
    return builder, split


def pick(keys, available, source, what):
    for key in keys:
        if key in available:
            return key
    raise ValueError(f"{source!r}: no {what} feature (looked for {', '.join(keys)}; the dataset "
                     f"has {', '.join(available)})")


class TFDSReader:
    def __init__(self, source: str, data_dir: str, task: str):
        import tensorflow_datasets as tfds

        builder, split = tfds_split(source, data_dir)
        features = builder.info.features
        self.source, self.task = source, task
        self.image_key = pick(IMAGE_KEYS, features, source, "image")
        self.target_key = pick(CAPTION_KEYS if task == "retrieval" else LABEL_KEYS, features,
                               source, "captions" if task == "retrieval" else "label")
        self.classnames, self.own_classnames = None, False
        if task != "retrieval" and hasattr(features[self.target_key], "names"):
            self.classnames = [n.replace("_", " ") for n in features[self.target_key].names]
        # Encoded bytes, decoded by our own transform: the same pixels as any other source.
        self.data = builder.as_data_source(
            split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})

    def __len__(self):
        return len(self.data)

    def where(self, i) -> str:
        return f"{self.source} record {i}"

    def record(self, i):
        example = self.data[i]
        target = example[self.target_key]
        if self.task == "retrieval":
            if isinstance(target, dict):  # a Sequence of dicts, e.g. coco_captions
                target = target.get("text", next(iter(target.values())))
            target = np.atleast_1d(target)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in target]
            return example[self.image_key], texts
        return example[self.image_key], int(target)
