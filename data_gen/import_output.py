"""Where data_gen.import_pairs puts its shards and manifests: a local folder, or an object store
(`gs://bucket/dir`, through etils.epath, the path layer the trainer reads shards with).

Object stores have no atomic rename; an object appears when its upload completes. So every
object is written once, complete, under its final name: a shard and its index are written
locally first (a staging folder, the ShardWriter's temporary-then-rename), then uploaded, index
first; the manifest is written last. "Finished" means listed in manifest.json with its sha256:
a shard of a killed run may exist without being listed, and the rerun writes it again. Locally
the same rules hold with renames (nothing half-written ever carries a final name).
"""
import contextlib
import json
import os
import shutil
import tempfile

from etils import epath

from synthclip_jax.run.files import atomic_path

UPLOAD_CHUNK = 16 << 20


class Output:
    def __init__(self, url):
        self.url = os.fspath(url)
        self.remote = "://" in self.url
        self.root = epath.Path(self.url)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = (tempfile.mkdtemp(prefix="import_pairs-staging-") if self.remote
                        else self.url)

    def local(self, name: str) -> str:
        """Where the shard writer writes `name` (its final place, or the staging folder)."""
        return os.path.join(self.staging, name)

    def publish(self, name: str) -> None:
        """Makes a closed shard (+ index) visible under its final name (uploads when remote)."""
        if not self.remote:
            return
        for n in (name + ".index", name):  # index first: a listed shard always has its index
            with open(self.local(n), "rb") as src, (self.root / n).open("wb") as dst:
                shutil.copyfileobj(src, dst, UPLOAD_CHUNK)
            os.remove(self.local(n))

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_json(self, name: str) -> "dict | None":
        try:
            return json.loads((self.root / name).read_text())
        except FileNotFoundError:
            return None

    def write_json(self, name: str, obj: dict) -> None:
        text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
        if self.remote:
            (self.root / name).write_text(text)  # one upload: visible only when complete
        else:
            with atomic_path(os.path.join(self.url, name)) as tmp:
                tmp.write_text(text)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()

    def names(self, pattern: str) -> list:
        return sorted(p.name for p in self.root.glob(pattern) if not p.name.startswith("."))

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.staging, ignore_errors=True)
