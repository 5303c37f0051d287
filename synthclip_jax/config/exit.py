"""How a bad config ends `main.py`: one line on stderr ("config error: ..."), status 2.

That covers the flags too: an override naming no config key (ml_collections raises a bare
KeyError/AttributeError inside absl's parser: a traceback), a value of the wrong type (absl: usage
text and status 1) and a config file that does not load (ml_collections raises only when the
config is first read).
"""
import re
import sys

from absl import flags


def exit_bad_config(message: str):
    print("config error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(2)


def unknown_key_message(argv, error) -> str:
    """One line for ml_collections' KeyError/AttributeError on an override naming no key."""
    text = str(error)
    missing = re.search(r"'([^'\\]+)", text)
    missing = missing.group(1) if missing else text
    flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                 and missing in a.split("=", 1)[0][len("--config."):].split(".")), "--config.*")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    hint = (f"did you mean {hint.group(1)!r}?" if hint
            else "check the spelling against the config file")
    return f"{flag}: the config has no key {missing!r}; {hint}"


def parse_flags(argv):
    """absl's parser, but a bad config flag is a bad config: one line and status 2 (absl exits
    1 with usage text; an unknown override key or an unloadable file raised a traceback)."""
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # a config file that failed to load raises only when read
        return rest
    except (AttributeError, KeyError) as error:  # ml_collections: an override names no key
        exit_bad_config(unknown_key_message(argv, error))
    except flags.Error as error:
        exit_bad_config(f"{error}; see --helpshort")
    except OSError as error:
        exit_bad_config(f"--config: {error}")
