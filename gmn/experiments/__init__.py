"""Experiments: one runnable module per paper table (``python -m gmn.experiments.<name> --help``)."""
