"""The country node: Flower ClientApp, DP trainer and everything the node enforces itself."""
