"""The installed Residency version, recorded in every reply and result."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("residency")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
