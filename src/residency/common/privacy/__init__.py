"""Privacy accounting: what a node's DP-SGD training has spent, computed by library accountants."""
