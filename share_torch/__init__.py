"""lorashare's user layer: :class:`SHAREModel` and the ``lorashare`` command.

Example:
    ```python
    from share_torch import SHAREModel

    share = SHAREModel.from_adapters(["adapters/a", "adapters/b", "adapters/c"], num_components=16)
    share.summary()
    share.save_pretrained("checkpoint")
    ```
"""

from share_core.errors import (
    AdapterNotFoundError,
    CheckpointError,
    CheckpointExistsError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    InvalidArgumentError,
    ShareError,
    UnknownAdapterError,
    UnsupportedAdapterError,
    WriteError,
)

from .model import SHAREModel
from .version import __version__

__all__ = [
    "SHAREModel",
    "ShareError",
    "AdapterNotFoundError",
    "CheckpointError",
    "CheckpointExistsError",
    "IncompatibleAdaptersError",
    "InvalidAdapterError",
    "InvalidArgumentError",
    "UnknownAdapterError",
    "UnsupportedAdapterError",
    "WriteError",
    "__version__",
]
