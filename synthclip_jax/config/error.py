"""The one exception for a config that cannot work.

Raised at the door (`config_check.validate`) and by the checks that need the devices (mesh
and batch sizes); `main.py` prints it as one line and exits with status 2, no traceback.
A ValueError, so callers that catch ValueError keep working.
"""


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        """`key`: the dotted config key at fault; `message`: one line naming the key, the value
        and the fix."""
        super().__init__(message)
        self.key = key
