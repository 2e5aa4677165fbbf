"""The ``lorashare`` command: compress, info, reconstruct, add, remove, report.

Each subcommand parses its arguments, calls the library and prints. Results go to stdout; logs, progress
bars and errors go to stderr. Exit codes: 0 success, 1 a known error (one line, no traceback unless
``--debug`` or ``LORASHARE_DEBUG=1``), 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from share_core.errors import CheckpointExistsError, InvalidArgumentError, ShareError

from .version import __version__

logger = logging.getLogger("lorashare")


def _num_components(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(
            f"-k/--num-components expects a positive integer or 'auto'; found {text!r}; e.g. -k 32 or -k auto"
        ) from None


def _cmd_compress(args: argparse.Namespace) -> int:
    from .model import SHAREModel

    if args.names is not None:
        if len(args.names) != len(args.adapters):
            raise InvalidArgumentError(
                f"--names gives {len(args.names)} names for {len(args.adapters)} adapters; give one name per "
                f"adapter, in the same order"
            )
        adapters: list[str] | dict[str, str] = dict(zip(args.names, args.adapters))
        if len(adapters) != len(args.names):
            raise InvalidArgumentError(f"--names has duplicates ({' '.join(args.names)}); names must be unique")
    else:
        adapters = args.adapters
    out = Path(args.output)
    # Checked before the (possibly long) compression, and again atomically when writing.
    _check_output(out, overwrite=args.overwrite, kind="checkpoint")
    share = SHAREModel.from_adapters(
        adapters,
        num_components=_num_components(args.num_components),
        variance_threshold=args.variance,
        center=args.center,
        device=args.device,
        dtype=args.dtype,
        layer_by_layer=args.layer_by_layer,
        chunk_size=args.chunk_size,
        show_progress=False if args.quiet else None,
        allow_pickle=args.allow_pickle,
        factor_form=args.factor_form,
        per_adapter=args.per_adapter,
        refine_steps=args.refine_steps,
        target_ratio=args.target_ratio,
        max_error=args.max_error,
        leave_one_out=args.leave_one_out,
    )
    share.save_pretrained(out, overwrite=args.overwrite)
    share.summary()
    print(f"\nsaved checkpoint to {out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import SHAREModel

    share = SHAREModel.from_pretrained(args.checkpoint)
    if args.json:
        from share_hf._io import strict_json

        print(strict_json(share.stats(), indent=2, sort_keys=True))
    else:
        share.summary()
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .model import SHAREModel

    if args.reconstruct_all == (args.adapter is not None):
        raise InvalidArgumentError("reconstruct needs exactly one of --adapter NAME or --all")
    names = None if args.reconstruct_all else [args.adapter]
    share = SHAREModel.from_pretrained(args.checkpoint, adapters=names)
    names = share.adapter_names if names is None else names
    out = Path(args.output)
    targets = {name: out / name if args.reconstruct_all else out for name in names}
    if args.reconstruct_all:
        _check_output(out, overwrite=True, kind="folder")
    existing = [str(t) for t in targets.values() if os.path.lexists(t) and t.is_dir()]
    if existing and not args.overwrite:
        raise CheckpointExistsError(
            f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose another -o path"
        )
    for target in targets.values():
        _check_output(target, overwrite=args.overwrite, kind="adapter")
    for name, target in targets.items():
        share.reconstruct(name, output_dir=target, overwrite=args.overwrite)
        print(f"{name} -> {target}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    index = write_report(args.checkpoint, args.output, overwrite=args.overwrite)
    print(f"wrote report to {index}")
    return 0


def _check_output(path: Path, *, overwrite: bool, kind: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    from share_hf import check_adapter_target, check_checkpoint_target

    if os.path.lexists(path) and not path.is_dir():
        raise CheckpointExistsError(
            f"expected -o {path} to be a folder to create, found a file there; choose another -o path "
            "(or remove that file)"
        )
    if kind == "folder":
        return
    if os.path.lexists(path) and not overwrite:
        raise CheckpointExistsError(
            f"output {path} already exists; pass --overwrite to replace it, or choose another -o path"
        )
    check = check_checkpoint_target if kind == "checkpoint" else check_adapter_target
    check(path, overwrite=overwrite)


def _common_flags(default) -> argparse.ArgumentParser:
    """-q/-v/--debug, accepted before or after the subcommand.

    The subcommands' copies default to SUPPRESS, so `lorashare --debug info X` is not reset by `info`.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings and errors on stderr, no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging on stderr")
    common.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors (or set LORASHARE_DEBUG=1)")
    return common


def _updated(args: argparse.Namespace, share, message: str) -> int:
    """Write an updated checkpoint: in place (atomic swap) unless -o names another folder."""
    if args.output is None and not Path(args.checkpoint).is_dir():
        raise InvalidArgumentError(f"{args.checkpoint} is not a local checkpoint folder to update in place; "
                                   f"pass -o OUT to write the updated checkpoint to a folder")
    out = Path(args.output) if args.output else Path(args.checkpoint)
    in_place = out.resolve() == Path(args.checkpoint).resolve()
    if not in_place:
        _check_output(out, overwrite=args.overwrite, kind="checkpoint")
    share.save_pretrained(out, overwrite=in_place or args.overwrite)
    stats = share.stats()
    print(f"{message}; {out} now holds {stats['num_adapters']} adapters in {stats['bytes']['checkpoint']:,} bytes "
          f"({stats['bytes']['ratio']:.2f}x smaller than their files)")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from .model import SHAREModel

    share = SHAREModel.from_pretrained(args.checkpoint)
    name = share.add_adapter(args.adapter, name=args.name, update_basis=not args.project_only,
                             show_progress=False if args.quiet else None, allow_pickle=args.allow_pickle)
    error = share.reconstruction_error(name)["overall"]
    how = "projected on the existing basis" if args.project_only else "basis updated"
    return _updated(args, share, f"added {name} ({how}, dW relative error {error:.3e})")


def _cmd_remove(args: argparse.Namespace) -> int:
    from .model import SHAREModel

    share = SHAREModel.from_pretrained(args.checkpoint)
    share.remove_adapter(args.name, show_progress=False if args.quiet else None)
    return _updated(args, share, f"removed {args.name}")


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags(argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="lorashare",
        description="Compress many PEFT LoRA adapters into one shared basis per layer, inspect the result, "
                    "and get standard PEFT adapters back.",
        parents=[_common_flags(False)],
    )
    parser.add_argument("--version", action="version", version=f"lorashare {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compress", parents=[common], help="compress PEFT LoRA adapters into a checkpoint",
                       description="Compress PEFT LoRA adapters (folders or Hub ids) into one lorashare checkpoint.")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="PEFT LoRA adapter folders or Hub ids (org/name)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write (must not exist unless --overwrite)")
    p.add_argument("-k", "--num-components", default="32", metavar="K|auto",
                   help="components kept per group (capped at the data's rank), or 'auto' (default: 32)")
    p.add_argument("--variance", type=float, default=0.95,
                   help="with -k auto: smallest k per group explaining this fraction of energy, in (0, 1] (default: 0.95)")
    p.add_argument("--names", nargs="+", default=None, help="one name per adapter (default: folder basenames)")
    p.add_argument("--center", action="store_true", help="subtract each group's mean before PCA (stored, added back)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, or auto")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "float64", "int8", "mixed"],
                   help="storage dtype of basis and loadings (default: the adapters' own); int8: one byte per "
                        "number plus a float32 scale per column; mixed: int8, with the basis columns the "
                        "allocation finds cheaper in int4 at half a byte (needs --target-ratio or --max-error)")
    p.add_argument("--layer-by-layer", action="store_true",
                   help="stream one layer group of all adapters at a time, each factor read by its byte range "
                        "(peak memory: one group plus the output); same result")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="fit each group's basis N adapters at a time, merging chunks exactly; same result")
    p.add_argument("--factor-form", default="balanced", choices=["balanced", "scaled"],
                   help="re-factor each dW as U S^1/2, S^1/2 V^T before stacking ('balanced', default: the basis "
                        "no longer depends on the B/A split) or stack each adapter's own B/A ('scaled')")
    p.add_argument("--per-adapter", default="auto", choices=["auto", "loadings", "core"],
                   help="store per adapter and module the cheaper of the two forms ('auto', default), r (k_B + k_A) "
                        "loadings, or the k_B x k_A core U^T dW V (same dW, fewer numbers when k < 2r)")
    p.add_argument("--refine-steps", type=int, default=None, metavar="N",
                   help="alternating refinement steps of each module's bases towards the lowest dW error "
                        "(default 1; 0 with --center or -k auto)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-ratio", type=float, default=None, metavar="R",
                        help="choose k per module and side so the checkpoint is at least R times smaller than the "
                             "adapter files, spending components where they remove the most dW error (overrides -k)")
    target.add_argument("--max-error", type=float, default=None, metavar="E",
                        help="choose k per module and side, cheapest first, until every adapter's dW relative "
                             "error is at most E, e.g. 0.05 (overrides -k)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="also estimate each adapter's dW error on bases fitted without it: how well a new "
                        "adapter like these would fit by projection (one more fit per adapter and module)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --output")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read adapter_model.bin (pickle) where an adapter has no safetensors file, through "
                        "torch.load(weights_only=True) only; off by default: pickle files can run code")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("info", parents=[common], help="print a checkpoint's figures",
                       description="Print a checkpoint's adapters, k per group, explained variance, dW error and bytes.")
    p.add_argument("checkpoint", help="checkpoint folder or Hub id")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of the table")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("add", parents=[common], help="fold one more adapter into a checkpoint",
                       description="Add an adapter to a checkpoint using the checkpoint alone (the other adapters' "
                                   "files are not needed). Updates CHECKPOINT in place, atomically, unless -o.")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("adapter", metavar="ADAPTER", help="PEFT LoRA adapter folder or Hub id")
    p.add_argument("--name", default=None, help="its name (default: the folder's basename)")
    p.add_argument("--project-only", action="store_true",
                   help="keep the basis and only project the new adapter on it (default: exact basis update)")
    p.add_argument("-o", "--output", default=None, help="write the result here instead of updating CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="with -o: replace an existing checkpoint there")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read adapter_model.bin through torch.load(weights_only=True) if there is no safetensors file")
    p.set_defaults(func=_cmd_add)

    p = sub.add_parser("remove", parents=[common], help="drop an adapter from a checkpoint and shrink it",
                       description="Remove an adapter; the bases shrink to what the others use and their "
                                   "reconstructions do not change. Updates CHECKPOINT in place, atomically, unless -o.")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("name", help="the adapter to remove")
    p.add_argument("-o", "--output", default=None, help="write the result here instead of updating CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="with -o: replace an existing checkpoint there")
    p.set_defaults(func=_cmd_remove)

    p = sub.add_parser("reconstruct", parents=[common], help="write standard PEFT adapters from a checkpoint",
                       description="Write standard PEFT LoRA folders (adapter_config.json + adapter_model.safetensors).")
    p.add_argument("checkpoint", help="checkpoint folder or Hub id")
    p.add_argument("--adapter", default=None, metavar="NAME", help="the adapter to write (into -o itself)")
    p.add_argument("--all", action="store_true", dest="reconstruct_all", help="every adapter, into -o/<name>/")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("report", parents=[common], help="write an HTML report with plots of a checkpoint",
                       description='Write DIR/index.html and PNG plots: explained variance and k per group, dW error '
                                   'per adapter and module, bytes before and after. Needs matplotlib '
                                   '(pip install "lorashare[report]").')
    p.add_argument("checkpoint", help="checkpoint folder or Hub id")
    p.add_argument("-o", "--output", required=True, help="report folder to write (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report at --output")
    p.set_defaults(func=_cmd_report)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("lorashare")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def one_line(text: str) -> str:
    """A multi-line message (a list of problems) as one line: bullets joined by "; "."""
    parts: list[str] = []
    items: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("- "):
            items.append(line[2:].strip())
            continue
        if items:
            parts.append("; ".join(items) + ".")
            items = []
        parts.append(line)
    if items:
        parts.append("; ".join(items))
    return " ".join(parts)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each on stderr, without the source line Python would print."""
    print(f"lorashare: warning: {one_line(str(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lorashare`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("LORASHARE_DEBUG", "") not in ("", "0")
    _configure_logging(args)
    with warnings.catch_warnings() if not debug else contextlib.nullcontext():
        if not debug:
            warnings.showwarning = _show_warning
        return _run(args, debug)


def _run(args: argparse.Namespace, debug: bool) -> int:
    try:
        return args.func(args)
    except ShareError as exc:
        if debug:
            raise
        print(f"lorashare: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lorashare: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system said no somewhere share_hf does not wrap
        if debug:
            raise
        print(f"lorashare: error: {one_line(str(exc))}; fix: check the path, its permissions and the free "
              "disk space (run with --debug for the traceback)", file=sys.stderr)
        return 1
    except MemoryError:
        if debug:
            raise
        print("lorashare: error: out of memory; fix: compress fewer adapters at once, use --layer-by-layer, "
              "or run on a machine with more memory", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or an environment problem we did not foresee
        if debug:
            raise
        print(f"lorashare: unexpected error: {type(exc).__name__}: {one_line(str(exc))} "
              f"(run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m share_torch.cli
    sys.exit(main())
