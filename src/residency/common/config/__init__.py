"""Validated, frozen configuration models read at the edges (job files, node files)."""
