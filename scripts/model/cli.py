"""Shared entry-point plumbing: one `error: …` line and exit status 2 on user errors."""

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from .errors import ModelToolError, UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting itself,
    so flag errors look like every other error of the tools."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def run(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Run main(argv), mapping ModelToolError to `error: …` on stderr and exit 2."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except ModelToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def progress(message: str) -> None:
    """One progress line on stderr (stdout stays free for machine-readable output)."""
    print(message, file=sys.stderr, flush=True)
