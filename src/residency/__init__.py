"""Residency: federated fine-tuning of BERT-family models, each country's data kept at home.

The layers, each importing only those below it:

- ``residency.cli``: the ``residency`` command (simulate, node, coordinator, run, audit);
- ``residency.client`` (the country node), ``residency.server`` (the coordinator) and
  ``residency.auditor`` (checks anyone can run on published records): never each other;
- ``residency.common``: configs, the model, data readers, privacy accounting, the ledger.
"""
