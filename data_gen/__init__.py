"""The generation stage: each module is a CLI, `python -m data_gen.<stage> --help`."""
