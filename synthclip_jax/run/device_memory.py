"""Device memory in use and its peak, for metrics.jsonl and the progress line.

GPUs and TPUs report it through `Device.memory_stats()`; the CPU backend returns None, and then
the keys are left out (a row never carries a made-up 0).
"""
import jax

GIB = 1024 ** 3


def device_memory(device=None) -> dict:
    """{"device_memory_bytes", "device_peak_bytes"} of `device` (default: this process's first
    device), or {} where the backend does not report them."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats() or {}
    found = {"device_memory_bytes": stats.get("bytes_in_use"),
             "device_peak_bytes": stats.get("peak_bytes_in_use")}
    return {k: v for k, v in found.items() if v is not None}


def describe(memory: dict) -> str:
    """'  mem 3.2/4.0 GiB' (in use / peak) for the progress line, '' when unknown."""
    if "device_memory_bytes" not in memory:
        return ""
    peak = memory.get("device_peak_bytes", memory["device_memory_bytes"])
    return f"  mem {memory['device_memory_bytes'] / GIB:.1f}/{peak / GIB:.1f} GiB"
