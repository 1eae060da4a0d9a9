"""The update kinds a job may choose: traits, model code and the registry that finds it.

Their traits are in :mod:`.traits` (torch-free), each kind's model code in its own module,
and the registry that finds that code in :mod:`.registry`. Nothing is imported here, so
reading a kind's traits never imports torch.
"""
