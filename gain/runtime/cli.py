"""Entry-point wrapper of the stage scripts: any failure ends the stage with one line and a non-zero exit.

`error: <message>` names the file, key, value or step at fault (StageError subclasses say so themselves;
anything else is prefixed with where it happened). GAIN_DEBUG=1 (or `--debug` on the command line) shows
the full traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from gain.runtime.errors import StageError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _where(e: BaseException) -> str:
    """file:line of the innermost frame in this project's code, for errors that do not name their cause."""
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if "/gain/" in f.filename or "/stages/" in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    root = os.getcwd() + os.sep
    return f" (at {f.filename.removeprefix(root)}:{f.lineno})"


def run_stage(main: Callable[[], None], argv: list[str] | None = None) -> None:
    """Call a stage's main(); turn every exception into `error: ...` on stderr and exit 2 (130 on Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("GAIN_DEBUG", "") not in ("", "0")
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted; rerun the stage to resume from its last checkpoint", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if debug:
            traceback.print_exc()
        elif isinstance(e, StageError):
            print(f"error: {e}", file=sys.stderr)
        else:
            print(
                f"error: {type(e).__name__}: {e}{_where(e)} (GAIN_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
        sys.exit(EXIT_ERROR)
