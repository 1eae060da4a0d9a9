"""Send Flower's and Residency's logs to the run's log file instead of the terminal."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

LOGGERS = ("flwr", "residency")


class _LazyFileHandler(logging.FileHandler):
    """Creates the file and its folder at the first record.

    A run refused during input validation therefore leaves no output folder behind.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):  # type: ignore[no-untyped-def]  # typeshed leaves the stream type open
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def quiet_libraries() -> contextlib.ExitStack:
    """Keep library load reports, progress bars and FutureWarnings off the terminal.

    The run's own progress display is what the user reads; the log file keeps the details.
    """
    import transformers

    stack = contextlib.ExitStack()
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity(logging.ERROR)
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    stack.callback(transformers.logging.set_verbosity, level)
    stack.callback(transformers.logging.enable_progress_bar)
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", FutureWarning)
    return stack


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """While active, every record of the ``flwr`` and ``residency`` loggers goes to ``path``.

    Flower's own console handler is muted for the duration (the CLI draws its own progress),
    and restored afterwards.
    """
    handler = _LazyFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved: list[tuple[logging.Handler, int]] = []
    propagate: dict[str, bool] = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for existing in logger.handlers:
            saved.append((existing, existing.level))
            existing.setLevel(logging.CRITICAL + 1)
        propagate[name] = logger.propagate
        logger.propagate = False
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    quiet = quiet_libraries()
    try:
        yield
    finally:
        quiet.close()
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.propagate = propagate[name]
        for existing, level in saved:
            existing.setLevel(level)
        handler.close()
