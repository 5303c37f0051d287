"""Named tower sizes (no jax import, so config files can use them cheaply)."""

# name -> (width, depth, heads, patch_size); the usual ViT table.
VIT_SIZES = {
    "Ti/16": (192, 12, 3, 16),
    "S/16": (384, 12, 6, 16),
    "B/32": (768, 12, 12, 32),
    "B/16": (768, 12, 12, 16),
    "L/14": (1024, 24, 16, 14),
    "H/14": (1280, 32, 16, 14),
}

# name -> (width, depth, heads); OpenCLIP's text towers for the matching image sizes.
TEXT_SIZES = {
    "Ti": (256, 12, 4),
    "S": (384, 12, 6),
    "B": (512, 12, 8),
    "L": (768, 12, 12),
    "H": (1024, 24, 16),
}


def vit_size(name: str) -> dict:
    if name not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r}; known: {sorted(VIT_SIZES)}")
    width, depth, heads, patch = VIT_SIZES[name]
    return dict(width=width, depth=depth, heads=heads, patch_size=patch)


def text_size(name: str) -> dict:
    if name not in TEXT_SIZES:
        raise ValueError(f"unknown text size {name!r}; known: {sorted(TEXT_SIZES)}")
    width, depth, heads = TEXT_SIZES[name]
    return dict(width=width, depth=depth, heads=heads)
