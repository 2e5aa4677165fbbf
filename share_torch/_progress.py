"""Progress bars and logging set-up shared by SHAREModel and the command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("lorashare")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Wrap `items` in a tqdm bar on stderr.

    Args:
        items: What to iterate over.
        desc: The bar's label.
        total: Length, when `items` has none.
        enabled: `True` always shows the bar, `False` never does, `None` (default) shows it only when
            stderr is a terminal, so logs and CI output stay clean.
    """
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
