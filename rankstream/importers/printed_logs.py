"""What a Hugging Face Trainer prints: its log dicts and its tqdm progress bar.

``ProgressCallback.on_log`` (``transformers/trainer_callback.py``) prints each log
with ``training_bar.write(str(logs))``: a Python ``repr`` of a dict, floats as
``'2.1'`` strings since transformers 4.5x (``f"{v:.4g}"``), as bare floats before
(a NaN then reads ``nan``, which no parser of literals accepts); with
``disable_tqdm`` ``PrinterCallback`` prints ``print(logs)``. ms-swift prints its
``logging.jsonl`` dicts the same way. They are read with ``ast.literal_eval``,
never ``eval``.

The training bar (``tqdm(total=max_steps)``, no description) shows the global
step and the elapsed time: ``  5%|▌         | 10/200 [00:10<03:10,  1.00s/it]``;
``tqdm.write`` redraws it right after the dict it prints, so the bar drawn next
tells the step and time of a dict.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

_BAR = re.compile(
    r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>\d+(?::\d+)+)"
)
#: A bare nan / inf as a dict value (``str`` of a dict of floats), and numpy 2's ``np.float64(2.1)`` repr.
_BARE_NONFINITE = re.compile(r"(?<=[:\[,]\s)(-?)(nan|inf)(?=\s*[,}\]])")
_NUMPY_SCALAR = re.compile(r"np\.(?:float|int)\d+\(([^()]*)\)")


@dataclass(frozen=True)
class Bar:
    desc: str
    n: int
    total: int
    elapsed: str  # "mm:ss" or "h:mm:ss", as tqdm prints it


def parse_bar(text: str) -> Bar | None:
    found = _BAR.match(text.strip())
    if not found:
        return None
    return Bar(found["desc"].strip(), int(found["n"]), int(found["total"]), found["elapsed"])


def looks_like_dict(text: str) -> bool:
    """A printed dict's start: read as one, and reported when it cannot be (a line cut by a crash)."""
    return text.lstrip().startswith("{'")


def parse_printed_dict(text: str) -> dict[str, Any]:
    """The dict a trainer printed; ``ValueError`` (one line) when it cannot be read."""
    source = _NUMPY_SCALAR.sub(r"\1", text.strip())
    source = _BARE_NONFINITE.sub(r"'\1\2'", source)
    try:
        obj = ast.literal_eval(source)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"unreadable log dict ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ValueError("not a dict of named values")
    return obj
