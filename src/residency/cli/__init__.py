"""The ``residency`` command line."""
