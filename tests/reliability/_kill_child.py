"""Child process of test_kill.py: ``lorashare`` (``share_torch.cli.main``) slowed down at one stage
of a save so the parent can SIGKILL it there.

Usage: ``python _kill_child.py MODE PROGRESS_FILE LORASHARE_ARGV...`` with MODE one of

- ``mid-write``: pause 0.3 s after each safetensors file, reporting ``wrote <path>``;
- ``after-exchange``: report ``exchanged`` and sleep once the new folder has been swapped in and
  the old one (now under the temporary name) is about to be deleted;
- ``mid-swap-fallback``: no renameat2 (the two-rename path); report ``renamed aside`` and sleep
  once the old checkpoint has been renamed aside, before the new one moves in.

The wrapping is done here, from outside lorashare: the library has no test hooks.
"""

from __future__ import annotations

import os
import sys
import time


def _report(progress: str, line: str) -> None:
    with open(progress, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    mode, progress, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    import share_hf._io as io
    import share_hf.checkpoint as checkpoint

    if mode == "mid-write":
        real_save = checkpoint.save_safetensors

        def slow_save(path, tensors):
            real_save(path, tensors)
            _report(progress, f"wrote {path}")
            time.sleep(0.3)

        checkpoint.save_safetensors = slow_save
    elif mode == "after-exchange":
        real_rmtree = io.shutil.rmtree

        class Shutil:
            def __getattr__(self, name):
                return getattr(io.shutil_module, name)

            @staticmethod
            def rmtree(path, *args, **kwargs):
                if ".tmp-" in os.fspath(path):
                    _report(progress, "exchanged")
                    time.sleep(120)
                return real_rmtree(path, *args, **kwargs)

        io.shutil_module = io.shutil
        io.shutil = Shutil()
    elif mode == "mid-swap-fallback":
        io._exchange = lambda a, b: False
        real_rename = os.rename

        class Os:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def rename(src, dst):
                real_rename(src, dst)
                if ".old-" in os.fspath(dst):
                    _report(progress, "renamed aside")
                    time.sleep(120)

        io.os = Os()
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    from share_torch.cli import main as lorashare

    return lorashare(argv)


if __name__ == "__main__":
    sys.exit(main())
