"""How both command lines (``lpldstore`` and ``lpld``) turn failures into one line and an exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from lpldstore.errors import LpldStoreError, MissingDependencyError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "run_command"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Optional dependencies by the top-level module a missing import names, and the extra that brings each.
_EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "sklearn": "pipeline",
    "aiohttp": "http",
    "requests": "http",
    "matplotlib": "plot",
    "s3fs": "s3 (pip install s3fs)",
    "gcsfs": "gcs (pip install gcsfs)",
    "huggingface_hub": "hf (pip install huggingface_hub)",
}


def missing_dependency(exc: ImportError) -> str:
    """One line naming what to install for an ImportError of an optional dependency."""
    if isinstance(exc, MissingDependencyError):
        return str(exc)
    name = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(name)
    if extra is None:
        return f"a required module is missing ({exc}); reinstall lpldstore with `bash scripts/setup.sh`"
    if "(" in extra:
        return f"this needs the optional package {name!r}: {extra.split('(')[1].rstrip(')')}"
    return f"this needs the optional package {name!r}: pip install 'lpldstore[{extra}]'"


def run_command(program: str, command: str, run: Callable[[], int], *, interrupted_hint: str = "") -> int:
    """Run one command; every failure becomes one line on stderr and a non-zero status.

    ``interrupted_hint`` is added to the Ctrl-C line (e.g. "rerun the same command to resume").
    """
    prefix = f"{program} {command}"
    try:
        return int(run())
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted{'; ' + interrupted_hint if interrupted_hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`lpldstore info S | head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except LpldStoreError as exc:
        if isinstance(exc, ImportError):
            print(f"{prefix}: error: {missing_dependency(exc)}", file=sys.stderr)
        else:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ImportError as exc:
        print(f"{prefix}: error: {missing_dependency(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(
            f"{prefix}: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except MemoryError:
        print(f"{prefix}: error: out of memory", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the last defence: a bug is one line, not a traceback
        if os.environ.get("LPLD_DEBUG"):
            traceback.print_exc()
        print(
            f"{prefix}: internal error: {type(exc).__name__}: {exc} (a bug; set LPLD_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
