"""XLA_FLAGS for the processes tests start: conftest's flags with the fake-device count set
(or removed), so every process compiles as the test process does (conftest: LLVM at -O0)."""
import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags(device_count: int | None = None) -> str:
    """The current XLA_FLAGS with `device_count` fake CPU devices (None: as many as cores)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(DEVICE_COUNT_FLAG)]
    if device_count is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={device_count}")
    return " ".join(flags)
