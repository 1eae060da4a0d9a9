"""The coordinator: Flower ServerApp, strategy with update validation, results."""
