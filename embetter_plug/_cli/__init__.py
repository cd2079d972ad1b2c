"""Subcommands of the ``embetter-plug`` command line (one module each)."""
