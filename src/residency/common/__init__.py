"""Shared by coordinator and nodes: configs, model building, data readers, privacy accounting."""
