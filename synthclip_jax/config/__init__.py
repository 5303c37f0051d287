"""The config and everything that checks it before any device work: the keys and their defaults
(`base.py`), the valid names (`choices.py`), mesh axes and default rules (`axis_rules.py`), the
checks at the door (`check.py` and the modules it calls), what a resume may change
(`resume_check.py`), the paths a command is given (`cli_paths.py`), and how a bad config ends a
command (`error.py`, `exit.py`: one line, status 2).

Kept import-light (no jax, nothing imported here): config files import `config.base`, and the
data_gen environments import `cli_paths` without the training stack.
"""
