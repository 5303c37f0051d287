"""Locked towers (LiT; OpenCLIP `--lock-image` / `--lock-text`): `train.lock_image`,
`train.lock_text`, each with `train.lock_*_unlocked_layers` = N.

A locked tower trains only its projection and its last N transformer blocks (with the final
LayerNorm once N >= 1, which OpenCLIP groups with the last block; and the embeddings too once
N exceeds the depth). For a ResNet image tower N counts stages (layer4, layer3, ...), and its
locked stages run BatchNorm in eval mode, so their running statistics stay frozen (OpenCLIP's
`freeze_bn_stats`). The MLP heads (`model.projection='mlp'`), the temperature, the logit bias
and the CLIPS captioner are never locked. One difference from OpenCLIP: there
`--lock-image-unlocked-groups 0` freezes the projection too; here the projection always trains
(the issue's LiT recipe: a trainable head on a locked tower).

Locked parameters get no optimizer state at all: the optimizer works on a flat list of the
trainable arrays only (`Trainable.view`), and a transformer's stacked block parameters (one
array of all layers, scanned) are sliced to their last N layers, so Adam's moments cover just
those rows. The update writes back only the trainable arrays and rows (`Trainable.put`), so
locked values stay bitwise unchanged, and the gradient norm (clipping) covers the trainable
parameters only, as OpenCLIP's does with `requires_grad=False`. XLA drops the gradient
computations nothing reads.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
from absl import logging

ALL, NONE = "all", "none"
_STAGE = re.compile(r"layer(\d+)$")


def lock_settings(config) -> dict:
    """{tower key in the params: unlocked layers} for the locked towers."""
    t = config.train
    towers = {}
    if t.get("lock_image", False):  # .get: configs from before the keys
        towers["visual"] = t.lock_image_unlocked_layers
    if t.get("lock_text", False):
        towers["text"] = t.lock_text_unlocked_layers
    return towers


def _rows(path: tuple, leaf, unlocked: int, num_stages: int, depth: int):
    """What of one parameter of a locked tower trains: ALL, NONE or the last n rows."""
    names = [str(getattr(k, "key", k)) for k in path]
    if names[1] in ("proj", "text_projection"):
        return ALL
    if "resblocks" in names:  # stacked (depth, ...) block parameters
        depth = leaf.shape[0]
        return NONE if unlocked == 0 else ALL if unlocked >= depth else unlocked
    if names[1] in ("ln_post", "ln_final"):
        return ALL if unlocked >= 1 else NONE
    stage = _STAGE.match(names[1])
    if stage:  # a ResNet stage
        return ALL if int(stage.group(1)) > num_stages - unlocked else NONE
    if num_stages:  # the ResNet stem
        return ALL if unlocked > num_stages else NONE
    return ALL if unlocked > depth else NONE  # embeddings, ln_pre


def _last_rows(leaf, n: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((n, *leaf.shape[1:]), leaf.dtype)
    if not hasattr(leaf, "shape"):  # a sharding or a decay-mask bool: the same for the rows
        return leaf
    return leaf[-n:]


@dataclasses.dataclass(frozen=True)
class Trainable:
    """Which parameters (and rows) train: one spec per leaf of the params tree."""
    specs: tuple  # per leaf, in tree order: ALL | NONE | n (last n rows)
    treedef: object

    def view(self, tree) -> list:
        """The trainable arrays of `tree` (params, grads, a decay mask, shardings), a flat
        list; stacked parameters sliced to their trainable rows (shardings kept as they are:
        the layer axis is never sharded)."""
        out = []
        for spec, leaf in zip(self.specs, self.treedef.flatten_up_to(tree)):
            if spec == NONE:
                continue
            out.append(leaf if spec == ALL else _last_rows(leaf, spec))
        return out

    def put(self, new: list, tree):
        """`tree` with its trainable arrays / rows replaced by `new` (a `view`'s list)."""
        new = iter(new)
        leaves = []
        for spec, leaf in zip(self.specs, self.treedef.flatten_up_to(tree)):
            if spec == NONE:
                leaves.append(leaf)
            elif spec == ALL:
                leaves.append(next(new))
            else:
                leaves.append(jnp.concatenate([leaf[:-spec], next(new)], axis=0))
        return self.treedef.unflatten(leaves)

    def counts(self, tree) -> tuple:
        """(trainable elements, all elements) of an abstract params tree."""
        every = sum(leaf.size for leaf in self.treedef.flatten_up_to(tree))
        return sum(leaf.size for leaf in self.view(tree)), every


def make_trainable(config, params) -> "Trainable | None":
    """The Trainable of `params` (the optimizer's pure dict of Params, abstract is fine), or
    None when no tower is locked."""
    towers = lock_settings(config)
    if not towers:
        return None
    m = config.model
    resnet = m.image.get("tower", "vit") == "resnet"
    depths = {"visual": m.image.depth, "text": m.text.depth}
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    specs = []
    for path, leaf in paths_leaves:
        tower = str(getattr(path[0], "key", path[0]))
        if tower not in towers:
            specs.append(ALL)
            continue
        stages = 4 if resnet and tower == "visual" else 0
        specs.append(_rows(path, leaf, towers[tower], stages, depths[tower]))
    return Trainable(tuple(specs), treedef)


def freeze_locked_batch_norm(config, model) -> None:
    """Eval mode (running statistics, never updated) for the BatchNorms of a locked ResNet's
    locked stages and stem: call on the train-mode model before taking its graphdef."""
    unlocked = lock_settings(config).get("visual")
    if unlocked is None or config.model.image.get("tower", "vit") != "resnet":
        return
    visual = model.visual
    stages = visual.num_stages
    if unlocked <= stages:
        visual.bn1.eval()
    for s in range(1, stages + 1):
        if s <= stages - unlocked:
            getattr(visual, f"layer{s}").eval()


def log_saving(trainable: "Trainable | None", params, moment_bytes: int) -> None:
    """Logs the optimizer memory the lock saves (`moment_bytes`: Adam's bytes per element,
    both moments)."""
    if trainable is None:
        return
    kept, every = trainable.counts(params)
    logging.info("locked towers: %s of %s parameters train; optimizer moments for %s fewer "
                 "(%.1f MiB saved)", f"{kept:,}", f"{every:,}", f"{every - kept:,}",
                 (every - kept) * moment_bytes / 2**20)
