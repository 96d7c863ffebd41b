"""The application wing: the ``numpy-attention`` command and its pictures.

- :mod:`numpy_attention.app.cli`: the command line, every subcommand's arguments in one place.
- :mod:`numpy_attention.app.demo`: the worked examples the demo prints and draws, including the
  seed document's two examples (``seed_cross_attention_example``, ``seed_fusion_example``).
- :mod:`numpy_attention.app.plotting`: attention maps with matplotlib (imported lazily; also
  importable as :mod:`numpy_attention.plotting`).
- :mod:`numpy_attention.app.files`: what the command may read and write (the user's files are
  never overwritten unless asked, never through a symbolic link).

Nothing here is imported by the math modules; importing this package imports neither
matplotlib nor the subcommands.
"""
