"""The one exception family of lorashare.

Every error lorashare raises on purpose is a :class:`ShareError`. Each subclass is also the
matching built-in exception, so ``except ValueError`` keeps working for callers who do not know
about lorashare. Messages say what was expected, what was found, and how to fix it.

This module lives in ``share_core`` because it is the bottom of the dependency chain; ``share_hf``
and ``share_torch`` re-export it.
"""

from __future__ import annotations

__all__ = [
    "ShareError",
    "ShapeError",
    "InvalidArgumentError",
    "BackendError",
    "AdapterNotFoundError",
    "InvalidAdapterError",
    "UnsupportedAdapterError",
    "IncompatibleAdaptersError",
    "CheckpointError",
    "CheckpointExistsError",
    "UnknownAdapterError",
    "WriteError",
]


class ShareError(Exception):
    """Base class of every error lorashare raises deliberately."""


class ShapeError(ShareError, ValueError):
    """Arrays whose shapes do not fit together (the message names the shapes)."""


class InvalidArgumentError(ShareError, ValueError):
    """An option with a value outside what it accepts (e.g. ``k <= 0``, a threshold outside (0, 1])."""


class BackendError(ShareError, TypeError):
    """An array namespace that lacks what an operation needs (e.g. no ``linalg``)."""


class AdapterNotFoundError(ShareError, FileNotFoundError):
    """A local adapter folder or Hub id that cannot be found."""


class InvalidAdapterError(ShareError, ValueError):
    """An adapter folder whose files are missing, corrupt, or disagree with each other."""


class UnsupportedAdapterError(ShareError, ValueError):
    """A valid PEFT adapter of a kind lorashare does not compress (e.g. not LoRA, DoRA)."""


class IncompatibleAdaptersError(ShareError, ValueError):
    """Adapters that cannot share a basis (different base model, target modules, shapes)."""


class CheckpointError(ShareError, ValueError):
    """A lorashare checkpoint that is missing files, corrupt, or inconsistent."""


class CheckpointExistsError(ShareError, FileExistsError):
    """An output path that already exists and may not be overwritten."""


class UnknownAdapterError(ShareError, KeyError):
    """An adapter name that the checkpoint does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class WriteError(ShareError, OSError):
    """An output that cannot be written: disk full, permission denied, read-only file system, a file where
    a folder is needed, a name too long. The message names the path and the fix; the original
    :class:`OSError` is chained, and its ``errno`` and ``filename`` are copied."""

    def __str__(self) -> str:  # OSError would print "[Errno N] strerror: filename" instead
        return str(self.args[0]) if self.args else ""
