"""Export trained weights to the PyTorch libraries: OpenCLIP (`openclip.py`) and transformers
(`hf.py`); `workdir.py` exports a training workdir. The CLI: `python -m tools.convert_to_openclip`.

Nothing here imports torch at module level (the package is JAX-only, see DESIGN.md); only
`hf.export_hf` imports torch and transformers, inside the function, because it builds the
transformers model to write its files.
"""
