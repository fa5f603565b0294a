"""Entry-point wrapper for stage scripts: configuration errors end the stage with one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_stage(main: Callable[[], None]) -> None:
    """Call a stage's main(); a params, tracking or input error prints `error: <message>` and exits 2."""
    from gain.download import DownloadError
    from gain.params import ParamsError
    from gain.tracking import TrackingError

    try:
        main()
    except (ParamsError, TrackingError, DownloadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
