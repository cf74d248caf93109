"""How both command lines (``lpldstore`` and ``lpld``) turn failures into one line and an exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping

from lpldstore.errors import LpldStoreError, MissingDependencyError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXTRAS", "missing_dependency", "run_command"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Optional dependencies by the top-level module a missing import names, and the extra that brings
# each (or the pip command, for fsspec back-ends that no extra names).
EXTRAS: Mapping[str, str] = {
    "torch": "torch",
    "torchvision": "torch",
    "sklearn": "pipeline",
    "aiohttp": "http",
    "requests": "http",
    "matplotlib": "plot",
    "s3fs": "pip install s3fs",
    "gcsfs": "pip install gcsfs",
    "huggingface_hub": "pip install huggingface_hub",
}


def missing_dependency(exc: ImportError, extras: Mapping[str, str] = EXTRAS) -> str | None:
    """One line naming what to install for a missing third-party module; None for anything else (a bug)."""
    if isinstance(exc, MissingDependencyError):
        return str(exc)
    name = (exc.name or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not name or name in ("lpldstore", "lpld_pipeline"):
        return None
    extra = extras.get(name)
    if extra is None:
        return f"this command needs the Python package {name!r}, which is not installed; install it with pip"
    install = extra if extra.startswith("pip ") else f"pip install 'lpldstore[{extra}]'"
    return f"this command needs {name}, which is not installed: {install}"


def _internal(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc} (a bug; set LPLD_DEBUG=1 for the traceback)"


def run_command(
    program: str,
    command: str,
    run: Callable[[], int],
    *,
    interrupted_hint: str = "",
    extras: Mapping[str, str] = EXTRAS,
) -> int:
    """Run one command; every failure becomes one line on stderr and a non-zero status.

    ``interrupted_hint`` is added to the Ctrl-C line (e.g. "rerun the same command to resume");
    ``extras`` maps a missing module to the extra that installs it. ``LPLD_DEBUG=1`` prints the
    traceback of any failure as well.
    """

    def fail(message: str, code: int = EXIT_ERROR) -> int:
        if os.environ.get("LPLD_DEBUG"):
            traceback.print_exc()
        print(f"{program} {command}: {message}", file=sys.stderr)
        return code

    try:
        return int(run())
    except KeyboardInterrupt:
        return fail(
            f"interrupted; {interrupted_hint}" if interrupted_hint else "interrupted", EXIT_INTERRUPTED
        )
    except BrokenPipeError:
        # The reader of our output went away (`lpldstore info S | head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ImportError as exc:  # MissingDependencyError included
        message = missing_dependency(exc, extras)
        return fail(_internal(exc) if message is None else f"error: {message}")
    except LpldStoreError as exc:  # both packages' errors
        return fail(f"error: {exc}")
    except OSError as exc:
        return fail(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except MemoryError:
        return fail("error: out of memory")
    except Exception as exc:  # noqa: BLE001 - the last defence: a bug is one line, not a traceback
        return fail(_internal(exc))
