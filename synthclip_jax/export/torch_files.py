"""Read the tensors of a PyTorch weights file without running any of its code.

`.safetensors` is read with `safetensors.numpy` (no torch). `.bin` / `.pt` / `.pth` are pickles:
they are read with `torch.load(weights_only=True)` plus an explicit allowlist (`SAFE_TYPES`) of
the few harmless, data-only types such files hold besides tensors: SynthCLIP's and SLIP's
trainers save their `argparse.Namespace` of arguments next to the weights. A file whose pickle
needs any other type fails naming it; nothing is ever fully unpickled.

Training checkpoints are unwrapped: `{'state_dict': {...}, 'optimizer': ..., 'args': ...}`
(SynthCLIP, OpenCLIP's `epoch_N.pt`) gives its `state_dict`, and DDP/DataParallel's `module.`
prefix is removed from every key.
"""
import argparse
import os
import pickle

import numpy as np

# Data-only types a trainer's checkpoint may hold besides tensors and builtins (the allowlist).
SAFE_TYPES = (argparse.Namespace,)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
DDP_PREFIX = "module."


class WeightsError(ValueError):
    """A weights source that cannot be read, or that does not fit the model config; the message
    is one line naming the file/key, what was found and what to change."""


def _type_name(t) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def load_pickle(path) -> object:
    """torch.load with weights-only semantics and the SAFE_TYPES allowlist."""
    import torch  # only pickled weights need it (see the module docstring)
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        allowed = {_type_name(t) for t in SAFE_TYPES}
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: a plain pickle, or no pickle at all
            needed = plain_pickle_globals(path)
            if needed is None:
                raise WeightsError(f"{path}: not a readable torch weights file (neither a torch "
                                   "zip checkpoint nor a pickle: damaged?); re-download or "
                                   "re-save it") from None
        others = [name for name in needed if name not in allowed]
        what = ", ".join(others) if others else "objects other than tensors"
        raise WeightsError(
            f"{path}: refusing to unpickle {what}: weights are read with "
            f"torch.load(weights_only=True), which allows tensors, builtins and "
            f"{sorted(allowed)} only; re-save the tensors alone (e.g. with safetensors) from "
            "a trusted environment") from None
    except Exception as error:  # a truncated zip, bytes that are no pickle: torch's words vary
        raise WeightsError(f"{path}: not a readable torch weights file (truncated or damaged? "
                           f"torch: {_first_line(error)}); re-download or re-save it") from None


def plain_pickle_globals(path):
    """The `module.name`s a plain (non-zip) pickle would import, read off its opcodes without
    running them; None if the file is not a whole pickle."""
    import pickletools
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # pickletools' errors for bytes that are no pickle vary
        return None
    return names


def _first_line(error) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}"


def to_numpy(value) -> np.ndarray:
    """A tensor (or array) as numpy: floats as float32 (bf16/fp16 widened); integer buffers
    (e.g. HF's position_ids) kept as they are, for the loaders to place or refuse."""
    if hasattr(value, "detach"):  # a torch tensor
        import torch
        value = value.detach().cpu()
        return (value.to(torch.float32) if value.is_floating_point() else value).numpy()
    array = np.asarray(value)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def unwrap(obj, path) -> tuple:
    """(state dict, the trainer's args as a dict or {}) of a checkpoint (see the module
    docstring)."""
    args = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        if isinstance(obj.get("args"), argparse.Namespace):
            args = vars(obj["args"])
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if not tensors:
        raise WeightsError(f"{path}: no tensors at the top level or under 'state_dict' "
                           f"(keys: {sorted(obj)[:10]})")
    return tensors, args


def read_safetensors(path) -> dict:
    from safetensors import SafetensorError, safe_open
    try:
        try:
            with safe_open(path, framework="np") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except TypeError:  # bfloat16, which numpy cannot hold: through torch
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:  # truncated, damaged
        raise WeightsError(f"{path}: not a readable .safetensors file (truncated or damaged? "
                           f"safetensors: {_first_line(error)}); re-download or re-save "
                           "it") from None


def check_finite(tensors: dict, where, names=None, allow: bool = False) -> None:
    """Refuses weights holding NaN or inf, naming the first such key: such weights evaluate to
    plausible-looking numbers here but to NaN features in OpenCLIP. `allow`: only a warning."""
    for key, value in tensors.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            name = (names or {}).get(key, key)
            message = (f"{where}: weight {name!r} holds {bad} non-finite values (NaN/inf) of "
                       f"{value.size}")
            if not allow:
                raise WeightsError(f"{message}; the weights are damaged: use an intact copy, or "
                                   "pass --allow-nonfinite to import them anyway")
            from absl import logging
            logging.warning("%s (imported anyway: --allow-nonfinite)", message)


def read_weights(path) -> tuple:
    """({key: float32 numpy}, trainer args dict or {}) of a `.safetensors` or (weights-only)
    torch file; DDP's `module.` prefix removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    args = {}
    if path.endswith(".safetensors"):
        tensors = read_safetensors(path)
    elif path.endswith(PICKLE_SUFFIXES):
        tensors, args = unwrap(load_pickle(path), path)
    else:
        raise WeightsError(f"{path}: unknown weights file type; expected .safetensors or one of "
                           f"{PICKLE_SUFFIXES}")
    if all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return {k: to_numpy(v) for k, v in tensors.items()}, args
