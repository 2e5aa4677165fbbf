"""share_hf: the file-format layer of lorashare.

PEFT LoRA adapter folders and Hub repos in (:func:`open_adapter`), lorashare checkpoints in and
out (:func:`save_checkpoint`, :func:`load_checkpoint`, :func:`push_checkpoint_to_hub`), and
plain PEFT adapter folders out (:func:`write_peft_adapter`). No linear algebra happens here.
"""

from share_core.errors import (
    AdapterNotFoundError,
    CheckpointError,
    CheckpointExistsError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    ShareError,
    UnknownAdapterError,
    UnsupportedAdapterError,
)
from share_hf.adapters import (
    AdapterSource,
    LoraModule,
    adapter_name_from_source,
    check_compatible,
    open_adapter,
)
from share_core.errors import WriteError
from share_hf.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    check_adapter_target,
    check_checkpoint_target,
    checkpoint_file_bytes,
    checkpoint_nbytes,
    load_checkpoint,
    push_checkpoint_to_hub,
    save_checkpoint,
    write_peft_adapter,
)

__all__ = [
    "FORMAT_VERSION",
    "AdapterNotFoundError",
    "AdapterSource",
    "Checkpoint",
    "CheckpointError",
    "CheckpointExistsError",
    "IncompatibleAdaptersError",
    "InvalidAdapterError",
    "LoraModule",
    "ShareError",
    "UnknownAdapterError",
    "UnsupportedAdapterError",
    "WriteError",
    "adapter_name_from_source",
    "check_adapter_target",
    "check_checkpoint_target",
    "check_compatible",
    "checkpoint_file_bytes",
    "checkpoint_nbytes",
    "load_checkpoint",
    "open_adapter",
    "push_checkpoint_to_hub",
    "save_checkpoint",
    "write_peft_adapter",
]
