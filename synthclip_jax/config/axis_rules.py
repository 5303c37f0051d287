"""Mesh axis names and the default logical-axis rules, without importing jax.

Config files read these (`config_base.mesh.rules`), and a config must load without jax;
`sharding.py` turns them into PartitionSpecs.
"""

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
)
