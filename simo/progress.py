"""Progress bars that suit where the code runs.

In Jupyter a bar is a widget (``tqdm.auto``). Under the batch runner (``python -m simo figures``,
which sets ``SIMO_PROGRESS=text``) a widget would be invisible in the terminal and leave "0%"
fallback text in the executed notebook, so bars are plain text on stderr instead: the runner relays
the latest one in its heartbeat lines and strips them from the notebook it keeps.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

from tqdm import auto, std

ENV = "SIMO_PROGRESS"
# a line that a text tqdm bar wrote ("fit:  50%|#####| 1/2 [00:01<00:01, 1.2it/s]"): the runner
# relays the newest, and the executed notebook it keeps drops them all
BAR_LINE = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` interactively; a text bar on stderr (refreshed ≤ every 2 s) under the
    runner."""
    if os.environ.get(ENV) == "text":
        kwargs.setdefault("mininterval", 2.0)
        return std.tqdm(*args, file=sys.stderr, ascii=True, **kwargs)
    return auto.tqdm(*args, **kwargs)
