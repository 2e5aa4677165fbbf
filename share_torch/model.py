"""`SHAREModel`: many LoRA adapters in, one shared basis per layer out, standard PEFT adapters back."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

import share_core as core
from share_core.errors import (
    CheckpointError,
    IncompatibleAdaptersError,
    InvalidArgumentError,
    ShareError,
    UnknownAdapterError,
)
from share_hf.adapters import AdapterSource, adapter_name_from_source, check_compatible, open_adapter
from share_hf.checkpoint import (
    Checkpoint,
    checkpoint_nbytes,
    INT8_FORMAT,
    MIXED_FORMAT,
    load_checkpoint,
    push_checkpoint_to_hub,
    save_checkpoint,
    write_peft_adapter,
)

from share_hf._io import safetensors_nbytes

from ._build import Plan, compress_all
from ._build import leave_one_out as leave_one_out_errors
from ._compress import (
    FACTOR_FORMS,
    MIXED,
    PER_ADAPTER_FORMS,
    SIDES,
    Reader,
    as_written,
    columns,
    core_loadings,
    dw_abs_and_norm,
    fold,
    form_for,
    pooled,
    ratio,
    restore,
    Storage,
    int4_after,
    store,
)
from ._update import added_side, copy_checkpoint, drift, removed_side
from ._progress import progress
from ._summary import build_summary, format_summary, natural_key
from .version import __version__

logger = logging.getLogger("lorashare")



def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device={str(device)!r} was asked for, but this PyTorch build sees no CUDA GPU "
            f"(torch {torch.__version__}); pass device='cpu' (CLI: --device cpu) or install a CUDA build of torch"
        )
    return dev


def _resolve_dtype(dtype: str | torch.dtype | None, sources: Sequence[AdapterSource]) -> Storage:
    if dtype is None:
        found = {s.dtype for s in sources}
        return found.pop() if len(found) == 1 else torch.float32
    if dtype == MIXED:
        return MIXED
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype), None)
    if resolved not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8):
        raise InvalidArgumentError(
            f"dtype must be one of float32, bfloat16, float16, float64, int8, mixed; found {dtype!r}"
        )
    return resolved


def _check_options(num_components: int | str, variance_threshold: float) -> tuple[int | None, float | None]:
    """Return (k, threshold) for the basis selection, or raise a clear error.

    The threshold is validated even with a fixed k, so a bad value is never silently ignored.
    """
    if isinstance(variance_threshold, bool) or not isinstance(variance_threshold, (int, float)) or not (
        0.0 < float(variance_threshold) <= 1.0
    ):
        raise InvalidArgumentError(
            f"variance_threshold must be a number in (0, 1]; found {variance_threshold!r}; e.g. 0.95 keeps 95% "
            f"of the energy of each group (used with num_components='auto')"
        )
    if num_components == "auto":
        return None, float(variance_threshold)
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components <= 0:
        raise InvalidArgumentError(
            f"num_components must be a positive integer or 'auto'; found {num_components!r}; "
            f"e.g. num_components=32 (CLI: -k 32) or num_components='auto' (CLI: -k auto)"
        )
    return num_components, None


def _check_quality_options(*, center: bool, factor_form: str, per_adapter: str, refine_steps: int,
                           target_ratio: float | None, max_error: float | None, leave_one_out: bool) -> None:
    """Validate the options that shape what is stored, with the fix in each message."""
    if factor_form not in FACTOR_FORMS:
        raise InvalidArgumentError(f"factor_form must be one of {', '.join(FACTOR_FORMS)}; found {factor_form!r}")
    if per_adapter not in PER_ADAPTER_FORMS:
        raise InvalidArgumentError(
            f"per_adapter must be one of {', '.join(PER_ADAPTER_FORMS)}; found {per_adapter!r}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise InvalidArgumentError(f"refine_steps must be an integer >= 0; found {refine_steps!r}; e.g. 2")
    if not isinstance(leave_one_out, bool):
        raise InvalidArgumentError(f"leave_one_out must be True or False; found {leave_one_out!r}")
    if target_ratio is not None and max_error is not None:
        raise InvalidArgumentError(
            f"give target_ratio or max_error, not both (found target_ratio={target_ratio!r}, "
            f"max_error={max_error!r}): one decides the size, the other the error")
    if target_ratio is not None and (isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float))
                                     or not math.isfinite(target_ratio) or target_ratio <= 0):
        raise InvalidArgumentError(
            f"target_ratio must be a positive number (original bytes / checkpoint bytes, e.g. 10); "
            f"found {target_ratio!r}")
    if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, (int, float))
                                  or not 0 < max_error < 1):
        raise InvalidArgumentError(
            f"max_error must be a number in (0, 1): the largest dW relative error allowed per adapter, "
            f"e.g. 0.05; found {max_error!r}")
    if center:
        needs = [what for what, on in (("per_adapter='core'", per_adapter == "core"),
                                       ("refine_steps", refine_steps > 0),
                                       ("target_ratio", target_ratio is not None),
                                       ("max_error", max_error is not None)) if on]
        if needs:
            raise InvalidArgumentError(
                f"{' and '.join(needs)} need(s) uncentered bases, but center=True; fix: drop center=True "
                f"(CLI: --center), which only helps when the adapters share a common offset")


def _assemble(sources: Sequence[AdapterSource], modules: Sequence[str], results: Mapping[str, Any],
              options: dict[str, Any], *, heads: dict, leave_out: dict[str, float] | None) -> Checkpoint:
    """The checkpoint of compressed modules: config, components, per-adapter parts and metadata."""
    components: dict[str, torch.Tensor] = {}
    loadings: dict[str, dict[str, torch.Tensor]] = {s.name: {} for s in sources}
    for module in modules:
        components.update(results[module].components)
        for name, loads in results[module].loadings.items():
            loadings[name].update(loads)
    errors = {s.name: {m: results[m].errors[s.name] for m in modules} for s in sources}
    metas = {
        src.name: {
            "peft_config": src.config,
            "source": src.source,
            "dtype": str(src.dtype).removeprefix("torch."),
            "ranks": {m: src.modules[m].rank for m in modules},
            "scales": {m: src.modules[m].scale for m in modules},
            "original_bytes": src.file_bytes,
            "dw_error": {m: ratio(*errors[src.name][m]) for m in modules},
            "dw_norm": {m: errors[src.name][m][1] for m in modules},
        }
        for src in sources
    }
    stats: dict[str, Any] = {
        "original_bytes": sum(s.file_bytes for s in sources),
        "dw_error": {name: pooled(errs.values()) for name, errs in errors.items()},
    }
    if leave_out is not None:
        stats["leave_one_out"] = dict(leave_out)
        for src in sources:
            metas[src.name]["leave_one_out"] = leave_out[src.name]
    config = {
        "format_version": MIXED_FORMAT if options.get("dtype") == MIXED else INT8_FORMAT,  # 4 only where needed
        "library": "lorashare",
        "library_version": __version__,
        "method": "share",
        "base_model_name_or_path": sources[0].config.get("base_model_name_or_path"),
        "adapters": [s.name for s in sources],
        "options": dict(options),
        "groups": {m: results[m].group for m in modules},
        "stats": stats,
    }
    return Checkpoint(config=config, components=components, loadings=loadings, heads=heads, metas=metas)


def _normalize_sources(adapters: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """Map adapter name -> path or Hub id; names default to folder basenames and must be unique."""
    if isinstance(adapters, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"adapters must be a list of adapter folders or Hub ids, or a dict name -> path; found the single "
            f"string {str(adapters)!r}; wrap it in a list together with the other adapters"
        )
    if isinstance(adapters, Mapping):
        return {str(k): str(v) for k, v in adapters.items()}
    named: dict[str, str] = {}
    for source in adapters:
        name = adapter_name_from_source(source)
        if name in named:
            raise InvalidArgumentError(
                f"two adapters would both be named {name!r} ({named[name]} and {source}); adapter names must be "
                f"unique: pass a dict name -> path (CLI: --names a b c)"
            )
        named[name] = str(source)
    return named


class SHAREModel:
    """A collection of LoRA adapters stored as one shared basis per layer plus small per-adapter loadings.

    Build one with :meth:`from_adapters` (compress PEFT adapters) or :meth:`from_pretrained` (load a
    checkpoint). Get adapters back with :meth:`reconstruct` (a PEFT folder or state dict) or :meth:`apply`
    (a `peft.PeftModel`).

    Example:
        ```python
        from share_torch import SHAREModel

        share = SHAREModel.from_adapters(["adapters/sst2", "adapters/cola"], num_components=16)
        share.summary()
        share.save_pretrained("my_share")
        share.reconstruct("sst2", output_dir="restored/sst2")
        ```
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device | None = None) -> None:
        self._ckpt = checkpoint
        self.device = _resolve_device(device)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_adapters(
        cls,
        adapters: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
        num_components: int | str = 32,
        variance_threshold: float = 0.95,
        *,
        center: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        layer_by_layer: bool = False,
        chunk_size: int | None = None,
        show_progress: bool | None = None,
        revision: str | None = None,
        token: str | None = None,
        allow_pickle: bool = False,
        factor_form: str = "balanced",
        per_adapter: str = "auto",
        refine_steps: int | None = None,
        target_ratio: float | None = None,
        max_error: float | None = None,
        leave_one_out: bool = False,
    ) -> SHAREModel:
        """Compress PEFT LoRA adapters into one shared basis per (module, side).

        Args:
            adapters: Local adapter folders or Hub ids (`org/name`), or a dict name -> folder/id. Names
                default to the folder's basename (the repo name for Hub ids) and must be unique.
            num_components: Components kept per group (capped at the data's rank), or `"auto"` to keep,
                per group, the fewest components whose explained variance reaches `variance_threshold`.
            variance_threshold: In (0, 1]; used when `num_components="auto"`.
            center: Subtract each group's mean column before PCA; the mean is stored and added back.
            device: `"cpu"` (default), `"cuda"`, `"cuda:1"` or `"auto"`: where the linear algebra runs.
            dtype: Storage dtype of the basis and loadings: `"float32"`, `"bfloat16"`, `"float16"`, `"float64"`,
                `"int8"` (one byte per number plus a float32 scale per column: about 0.5% rounding error per
                column, checkpoint format 3) or `"mixed"` (int8, except the basis columns that the allocation
                finds cheaper to keep in int4, half a byte per number with about 7% rounding error per column;
                needs `target_ratio` or `max_error`; checkpoint format 4); default is the adapters' own dtype.
                Heads keep their own dtype.
            layer_by_layer: Read one module group of all adapters at a time from the memory-mapped files
                (peak memory: one group plus the output) instead of reading every adapter's factors up front.
                Same result within floating-point tolerance.
            chunk_size: Fit each group's basis this many adapters at a time, merging the chunks' thin SVDs
                exactly; the result equals the all-at-once basis within floating-point tolerance.
            show_progress: Progress bar on stderr: `None` shows it only on a terminal.
            revision, token: Passed to the Hub for Hub ids.
            allow_pickle: Also read adapters saved as `adapter_model.bin` (pickle), and then only through
                `torch.load(weights_only=True)`. Off by default: only safetensors are read.
            factor_form: What is stacked: `"balanced"` (default: each adapter re-factored as `B' = U S^1/2`,
                `A' = S^1/2 V^T` from the SVD of its scaled `B A`, computed with r-sized work, which makes the
                basis independent of the arbitrary split of dW between B and A; lower dW error on every set
                measured, see docs/benchmarks.md) or `"scaled"` (each adapter's own B and A with sqrt(scale)
                folded into each, as SHARE does). Reconstruction gives dW back either way; with "balanced" the
                returned B and A are a different split of it than the original files'.
            per_adapter: What is stored per adapter and module: `"auto"` (default: the cheaper of the two below,
                module by module; loadings when centered), `"loadings"` (`U^T B`, `V^T A^T`: r (k_B + k_A)
                numbers) or `"core"` (the k_B x k_A matrix `U^T dW V`: the same dW^ for k_B k_A numbers, fewer
                whenever k < 2r). Cores need uncentered bases.
            refine_steps: Alternating refinement steps of each module's bases towards the lowest total dW
                error at its k (each step can only lower it; one step gets nearly all of the gain measured,
                see docs/benchmarks.md). Default `None`: 1 step, or 0 with center=True (refinement needs
                uncentered bases) and with `num_components="auto"` (whose promise is the explained variance of
                the factors, which refinement trades for a lower dW error); 0 keeps the PCA bases.
            target_ratio: Choose (k_B, k_A) per module so that the checkpoint, as written, is at least this
                many times smaller than the adapter files, spending components where they remove the most
                dW error per byte. Overrides `num_components`. Needs center=False.
            max_error: Choose (k_B, k_A) per module, cheapest first, until every adapter's dW relative error
                is at most this (e.g. 0.05). Overrides `num_components`. Needs center=False.
            leave_one_out: Also estimate, for each adapter, its dW error on bases fitted without it: how well a
                new adapter like these would fit by projection (`add_adapter(..., update_basis=False)`). Costs
                one more fit per adapter and module.

        Returns:
            The compressed collection, not yet written: call :meth:`save_pretrained`.

        Raises:
            ShareError: For bad options, unreadable or incompatible adapters (the message says which
                adapter, what was expected, what was found and how to fix it).
        """
        k, threshold = _check_options(num_components, variance_threshold)
        if refine_steps is None:  # refinement optimizes dW, not the factors' explained variance that "auto" asks for
            refine_steps = 0 if center or (k is None and target_ratio is None and max_error is None) else 1
        _check_quality_options(center=center, factor_form=factor_form, per_adapter=per_adapter,
                               refine_steps=refine_steps, target_ratio=target_ratio, max_error=max_error,
                               leave_one_out=leave_one_out)
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
                raise InvalidArgumentError(f"chunk_size must be a positive integer or None; found {chunk_size!r}")
        dev = _resolve_device(device)
        names = _normalize_sources(adapters)

        sources = [
            open_adapter(path, name=name, revision=revision, token=token, allow_pickle=allow_pickle)
            for name, path in progress(names.items(), desc="reading adapters", total=len(names), enabled=show_progress)
        ]
        check_compatible(sources)
        store_dtype = _resolve_dtype(dtype, sources)
        if store_dtype == MIXED and target_ratio is None and max_error is None:
            raise InvalidArgumentError(
                "dtype='mixed' chooses int8 or int4 for each basis column to spend a byte budget or reach an error "
                "target, so it needs target_ratio or max_error (CLI: --target-ratio, --max-error); with a fixed "
                "num_components use dtype='int8'")
        compute_dtype = torch.float64 if store_dtype == torch.float64 else torch.float32
        target = (f"target_ratio={target_ratio:g}" if target_ratio is not None else
                  f"max_error={max_error:g}" if max_error is not None else f"k={num_components}")
        logger.info("compressing %d adapters on %s (%s, storage %s)", len(sources), dev, target,
                    str(store_dtype).removeprefix("torch."))

        modules = sorted(sources[0].modules, key=natural_key)
        read = Reader.for_sources(
            sources, modules, layer_by_layer=layer_by_layer, device=dev, dtype=compute_dtype, factor_form=factor_form,
            wrap=lambda items: progress(items, desc="loading factors", total=len(sources), enabled=show_progress))
        plan = Plan(k=k, threshold=threshold, center=center, chunk_size=chunk_size, store_dtype=store_dtype,
                    per_adapter=per_adapter, refine_steps=refine_steps, target_ratio=target_ratio,
                    max_error=max_error)
        options = {
            "num_components": num_components,
            "variance_threshold": threshold,
            "center": bool(center),
            "factor_form": factor_form,
            "per_adapter": per_adapter,
            "refine_steps": int(refine_steps),
            "dtype": str(store_dtype).removeprefix("torch."),
        }
        if target_ratio is not None:
            options["target_ratio"] = float(target_ratio)
        if max_error is not None:
            options["max_error"] = float(max_error)

        longest = -1.2345678901234567e-100  # a float as long as JSON prints them, for figures known only later
        if target_ratio is not None:
            options["allocation"] = {"target_ratio": float(target_ratio),
                                     "budget_bytes": int(sum(s.file_bytes for s in sources) / target_ratio),
                                     "predicted_rms_error": longest}
        elif max_error is not None:
            options["allocation"] = {"max_error": float(max_error), "predicted_rms_error": longest,
                                     "achieved_max_error": longest}

        def wrap(items, desc="compressing layers"):
            return progress(items, desc=desc, enabled=show_progress)

        def measure(results) -> int:
            # the leave-one-out figures come later; count them at the longest a JSON float can print
            placeholder = {s.name: longest for s in sources} if leave_one_out else None
            draft = _assemble(sources, modules, results, options, heads={}, leave_out=placeholder)
            return sum(checkpoint_nbytes(draft).values()) + heads_bytes

        heads = {}
        for src in sources:
            carried = src.load_carried()
            if carried:
                heads[src.name] = carried
        heads_bytes = sum(safetensors_nbytes(h) for h in heads.values())
        built = compress_all(modules, sources, read, plan, wrap=wrap, measure=measure)
        loo = None
        if leave_one_out:
            groups = {m: r.group for m, r in built.results.items()}
            loo = leave_one_out_errors(modules, sources, read, groups, plan, wrap)
        del read  # free the preloaded factors
        if built.allocation:
            options["allocation"] = built.allocation
        ckpt = _assemble(sources, modules, built.results, options, heads=heads, leave_out=loo)
        model = cls(ckpt, device=dev)
        overall = ckpt.config["stats"]["dw_error"]
        logger.info("compressed %d adapters: mean dW relative error %.4g", len(sources),
                    sum(overall.values()) / len(overall))
        return model

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        adapters: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> SHAREModel:
        """Load a checkpoint written by :meth:`save_pretrained`, from a folder or a Hub repo.

        Args:
            path_or_id: A checkpoint folder, or a Hub repo id (`org/name`).
            adapters: Load only these adapters (their files alone are read); default all.
            device: Where :meth:`reconstruct` and :meth:`apply` do their arithmetic.
            revision, token: For Hub repos.
        """
        ckpt = load_checkpoint(path_or_id, adapters=adapters, revision=revision, token=token)
        return cls(ckpt, device=device)

    # ------------------------------------------------------------------ inspecting

    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapters held (in checkpoint order)."""
        return [n for n in self._ckpt.config["adapters"] if n in self._ckpt.metas]

    @property
    def config(self) -> dict[str, Any]:
        """The checkpoint's `share_config.json` content."""
        return self._ckpt.config

    @property
    def modules(self) -> list[str]:
        """The LoRA modules (groups) compressed, in natural layer order."""
        return sorted(self._ckpt.config["groups"], key=natural_key)

    def num_components(self, module: str, side: str = "lora_B") -> int:
        """Components kept for one group, e.g. `num_components(module, "lora_A")`."""
        return int(self._ckpt.config["groups"][module][side]["k"])

    def __repr__(self) -> str:
        return (f"SHAREModel({len(self.adapter_names)} adapters, {len(self.modules)} modules, "
                f"device={self.device})")

    def __contains__(self, name: object) -> bool:
        return name in self._ckpt.metas

    def stats(self) -> dict[str, Any]:
        """The headline figures as a dict: adapters, groups, k, explained variance, dW error, bytes."""
        return build_summary(self._ckpt, checkpoint_nbytes(self._ckpt))

    def summary(self, *, print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
        """Print a human summary (like `lorashare info`) and return the same figures as a dict.

        Args:
            print_fn: Where the text goes (default `print`); `None` prints nothing.
        """
        stats = self.stats()
        if print_fn is not None:
            print_fn(format_summary(stats))
        return stats

    # ------------------------------------------------------------------ getting adapters back

    def _meta(self, name: str) -> dict[str, Any]:
        if name not in self._ckpt.metas:
            listed = ", ".join(self.adapter_names) or "(none loaded)"
            raise UnknownAdapterError(f"no adapter named {name!r} in this checkpoint; it holds: {listed}")
        return self._ckpt.metas[name]

    def _factors(self, name: str, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed (A, B) of one module in the adapter's own parametrization (scale unfolded)."""
        rebuilt = self._rebuilt(self._ckpt, name, module)
        scale = float(self._meta(name)["scales"][module])
        b, a = core.fold_scale(rebuilt["lora_B"], rebuilt["lora_A"].mT, scale=1.0 / scale)
        return a, b

    def reconstruct_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter as a PEFT state dict (keys as in `adapter_model.safetensors`), in its own dtype."""
        meta = self._meta(name)
        dtype = getattr(torch, meta["dtype"])
        tensors: dict[str, torch.Tensor] = {}
        for module in sorted(meta["ranks"], key=natural_key):
            a, b = self._factors(name, module)
            tensors[f"{module}.lora_A.weight"] = a.to("cpu", dtype).contiguous()
            tensors[f"{module}.lora_B.weight"] = b.to("cpu", dtype).contiguous()
        for key, value in self._ckpt.heads.get(name, {}).items():
            tensors[key] = value
        return tensors

    def peft_config(self, name: str) -> dict[str, Any]:
        """The adapter's original `adapter_config.json` content."""
        return dict(self._meta(name)["peft_config"])

    def reconstruct(self, name: str, output_dir: str | os.PathLike | None = None, *,
                    overwrite: bool = False) -> dict[str, torch.Tensor]:
        """Give one adapter back as a standard PEFT LoRA.

        Args:
            name: The adapter's name (see :attr:`adapter_names`).
            output_dir: When given, write `adapter_config.json` + `adapter_model.safetensors` there (atomically);
                `peft.PeftModel.from_pretrained(base, output_dir)` loads it with no lorashare code.
            overwrite: Replace an existing folder at `output_dir`.

        Returns:
            The adapter's state dict (LoRA factors in the adapter's original dtype, plus its heads).
        """
        tensors = self.reconstruct_state_dict(name)
        if output_dir is not None:
            write_peft_adapter(output_dir, config=self.peft_config(name), tensors=tensors, overwrite=overwrite)
            logger.info("wrote adapter %r to %s", name, output_dir)
        return tensors

    def apply(self, base_model: torch.nn.Module, adapter_name: str | Sequence[str]):
        """Load adapter(s) into a model and return a `peft.PeftModel`, with no temporary files.

        Args:
            base_model: A transformers model (modified in place, as `PeftModel.from_pretrained` does), or a
                `PeftModel` to which the adapters are added.
            adapter_name: One name, or several; the first one is made active. Switch with
                `peft_model.set_adapter(name)`.

        Returns:
            `peft.PeftModel` in inference mode.
        """
        from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict

        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if not names:
            raise InvalidArgumentError("apply() needs at least one adapter name; found an empty list")
        model = base_model
        for name in names:
            config = PeftConfig.from_peft_type(**self.peft_config(name))
            config.inference_mode = True
            try:
                with warnings.catch_warnings():
                    # PeftModel.from_pretrained attaches to any base path silently; get_peft_model warns that
                    # base_model_name_or_path was "renamed" when the model came from another folder.
                    warnings.filterwarnings("ignore", message="The PEFT config's `base_model_name_or_path`")
                    if isinstance(model, PeftModel):
                        model.add_adapter(name, config)
                    else:
                        model = get_peft_model(model, config, adapter_name=name)
            except (ValueError, KeyError) as exc:
                raise ShareError(
                    f"could not attach adapter {name!r} to {type(base_model).__name__}: {exc}; the adapter was "
                    f"trained on {config.base_model_name_or_path!r}: pass that base model"
                ) from exc
            result = set_peft_model_state_dict(model, self.reconstruct_state_dict(name), adapter_name=name)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k or "modules_to_save" in k]
            if unexpected:
                raise ShareError(f"adapter {name!r} did not fit the model: unexpected keys {unexpected[:5]}")
        model.set_adapter(names[0])
        model.eval()
        return model

    # ------------------------------------------------------------------ quality

    def reconstruction_error(self, name: str, original_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Relative errors of one adapter, per module and overall.

        Without `original_path`, the dW-level errors measured at compression time (stored in the checkpoint)
        are returned. With the original adapter folder (or Hub id), they are measured afresh, dW-level and per
        factor (`lora_A`, `lora_B` in the adapter's own parametrization; only for `factor_form="scaled"`, since
        a balanced checkpoint gives dW back in another split between B and A by design).

        Returns:
            `{"adapter", "overall", "per_module": {module: {"dw": ..., ["lora_A": ..., "lora_B": ...]}}}`
            where each figure is `||x - x_hat||_F / ||x||_F` and `overall` pools all modules' dW.
        """
        meta = self._meta(name)
        if original_path is None:
            per = {m: {"dw": e} for m, e in meta["dw_error"].items()}
            return {"adapter": name, "overall": self._ckpt.config["stats"]["dw_error"][name],
                    "measured": "at compression", "per_module": per}
        src = open_adapter(original_path, name=name)
        per, pairs = {}, []
        for module in sorted(meta["ranks"], key=natural_key):
            if module not in src.modules:
                raise ShareError(f"the original adapter at {original_path} has no LoRA module {module!r}; "
                                 f"is it the adapter that was compressed as {name!r}?")
            compute, _ = self._dtypes()
            a, b = (t.to(self.device, compute) for t in src.load_factors(module))
            a_hat, b_hat = (t.to(getattr(torch, meta["dtype"])) for t in self._factors(name, module))  # as written
            err, norm = dw_abs_and_norm(*fold(a, b, src.modules[module].scale, self.device, compute),
                                        *fold(a_hat, b_hat, float(meta["scales"][module]), self.device, compute))
            pairs.append((err, norm))
            per[module] = {"dw": ratio(err, norm)}
            if self._ckpt.config["options"].get("factor_form", "scaled") == "scaled":
                # balanced checkpoints give dW back in another B/A split by design: only dW is comparable
                per[module].update({"lora_A": float(core.relative_error(a, a_hat)),
                                    "lora_B": float(core.relative_error(b, b_hat))})
        return {"adapter": name, "overall": pooled(pairs), "measured": "against original", "per_module": per}

    # ------------------------------------------------------------------ incremental updates

    def _require_complete(self, what: str) -> None:
        missing = [n for n in self._ckpt.config["adapters"] if n not in self._ckpt.metas]
        if missing:
            raise InvalidArgumentError(
                f"{what} needs every adapter's loadings, but this model was loaded with adapters=[...] and "
                f"{len(missing)} are not loaded ({', '.join(missing[:5])}); load it with "
                f"SHAREModel.from_pretrained(path) without adapters="
            )

    def _dtypes(self) -> tuple[torch.dtype, Storage]:
        name = self._ckpt.config["options"].get("dtype", "float32")
        store_dtype = MIXED if name == MIXED else getattr(torch, name)
        return (torch.float64 if store_dtype == torch.float64 else torch.float32), store_dtype

    def _check_fits(self, src: AdapterSource) -> None:
        groups, problems = self._ckpt.config["groups"], []
        missing, extra = sorted(set(groups) - set(src.modules)), sorted(set(src.modules) - set(groups))
        if missing:
            problems.append(f"it lacks {len(missing)} LoRA modules of the checkpoint, e.g. {missing[0]!r}")
        if extra:
            problems.append(f"it has {len(extra)} LoRA modules the checkpoint lacks, e.g. {extra[0]!r}")
        for m in sorted(set(groups) & set(src.modules)):
            got, want = (src.modules[m].d_in, src.modules[m].d_out), (groups[m]["d_in"], groups[m]["d_out"])
            if got != want:
                problems.append(f"module {m!r} is (d_in, d_out)={got}, the checkpoint's is {want}")
                break
        base, ours = src.config.get("base_model_name_or_path"), self._ckpt.config.get("base_model_name_or_path")
        if base and ours and base != ours:
            problems.append(f"its base model is {base!r}, the checkpoint's is {ours!r}")
        if problems:
            raise IncompatibleAdaptersError(f"adapter {src.name!r} ({src.source}) does not fit this checkpoint: "
                                            + "; ".join(problems))

    def _rebuilt(self, ckpt: Checkpoint, name: str, module: str) -> dict[str, torch.Tensor]:
        """Folded-space columns per side of one adapter's module, rebuilt from `ckpt`'s stored tensors."""
        compute, _ = self._dtypes()
        if ckpt.config["groups"][module].get("per_adapter", "loadings") == "core":
            loads = core_loadings(ckpt.loadings[name][f"{module}.core"], int(ckpt.metas[name]["ranks"][module]),
                                  self.device, compute)
        else:
            loads = {side: ckpt.loadings[name][f"{module}.{side}"] for side in SIDES}
        return {side: restore(loads[side], ckpt.components[f"{module}.{side}.basis"],
                              ckpt.components.get(f"{module}.{side}.mean"), self.device, compute)
                for side in SIDES}

    def _rebound_errors(self, work: Checkpoint, names: Sequence[str], drifts: dict[str, dict[str, float]]) -> None:
        """After an update, bound each adapter's dW error by (error before) + (how far its dW^ moved).

        Modules that did not move (no entry in `drifts`, or 0.0) keep their stored figures exactly, and so does
        the overall figure of an adapter none of whose modules moved.
        """
        for name in names:
            meta = work.metas[name]
            moved_modules = {m: moved for m, moved in drifts[name].items() if moved > 0.0}
            if not moved_modules:
                continue
            if "dw_norm" not in meta:
                raise CheckpointError(f"adapter {name!r} has no dw_norm in adapter_meta.json (written by an older "
                                      f"lorashare?); recompress from the original adapters to update it")
            absolute = {m: meta["dw_error"][m] * float(meta["dw_norm"][m]) for m in meta["dw_norm"]}
            for module, moved in moved_modules.items():
                absolute[module] += moved
            for module in meta["dw_norm"]:
                if float(meta["dw_norm"][module]) == 0.0:
                    # dW is zero there (e.g. a module training never touched, with a centered basis): the error
                    # is ||dW^|| itself, exact, which a relative figure (inf) cannot carry into the pooled one
                    rebuilt = self._rebuilt(work, name, module)
                    absolute[module] = dw_abs_and_norm(rebuilt["lora_A"].mT, rebuilt["lora_B"],
                                                       rebuilt["lora_A"].mT, rebuilt["lora_B"])[1]
            for module in moved_modules:
                meta["dw_error"][module] = ratio(absolute[module], float(meta["dw_norm"][module]))
            meta["dw_error_is_upper_bound"] = True
            work.config["stats"]["dw_error"][name] = pooled(
                (absolute[m], float(meta["dw_norm"][m])) for m in meta["dw_norm"])

    def _unpack_cores(self, work: Checkpoint) -> list[str]:
        """Turn every core group of `work` into the loadings form (exact: the core's rank-r factors), so the
        updates below work on one representation; returns the modules to pack again."""
        compute, _ = self._dtypes()
        modules = [m for m, g in work.config["groups"].items() if g.get("per_adapter") == "core"]
        for module in modules:
            for name in work.loadings:
                loads = core_loadings(work.loadings[name].pop(f"{module}.core"),
                                      int(work.metas[name]["ranks"][module]), self.device, compute)
                for side in SIDES:
                    work.loadings[name][f"{module}.{side}"] = loads[side]
            work.config["groups"][module]["per_adapter"] = "loadings"
        return modules

    def _pack_cores(self, work: Checkpoint, modules: Sequence[str]) -> None:
        """Store the given modules as k_B x k_A cores again after an update, except where a side now has k = 0:
        there is nothing to store on it, and such a module stays in the loadings form (as `form_for` chooses
        at compression), since a core with an empty side cannot be factored back."""
        compute, store_dtype = self._dtypes()
        for module in modules:
            group = work.config["groups"][module]
            if form_for("core", int(group["lora_B"]["k"]), int(group["lora_A"]["k"]), (), False) != "core":
                continue
            for name in work.loadings:
                lb = work.loadings[name].pop(f"{module}.lora_B").to(self.device, compute)
                la = work.loadings[name].pop(f"{module}.lora_A").to(self.device, compute)
                work.loadings[name][f"{module}.core"] = store(lb @ la.mT, store_dtype)
            work.config["groups"][module]["per_adapter"] = "core"

    def add_adapter(self, path_or_id: str | os.PathLike, name: str | None = None, *, update_basis: bool = True,
                    show_progress: bool | None = None, revision: str | None = None, token: str | None = None,
                    allow_pickle: bool = False) -> str:
        """Fold one more adapter into the collection, without the original files of the others.

        Args:
            path_or_id: The new adapter's folder or Hub id.
            name: Its name (default: the folder's basename); must be new.
            update_basis: `True` (default) updates each group's basis exactly to cover old and new data (every
                stored loading is rotated into the new basis). k is chosen again by `num_components` (capped at
                the rank) or by the variance threshold (`"auto"`); in a checkpoint built with `target_ratio` or
                `max_error` each group keeps its k (no new allocation: the byte ratio and the errors are no
                longer the ones targeted). The other adapters' stored dW errors become upper bounds (error before
                + how far their reconstruction moved), flagged `dw_error_is_upper_bound` in their metadata.
                `False` only projects the new adapter on the existing basis: nothing else changes (the basis, the
                other adapters' stored tensors and their stored errors stay exactly as they were), but the new
                adapter is only as well represented as the basis allows (see its dW error in `stats()`).
            show_progress, revision, token, allow_pickle: As in :meth:`from_adapters`.

        Returns:
            The new adapter's name. The model changes in memory; call :meth:`save_pretrained` to keep it.
        """
        self._require_complete("add_adapter")
        name = adapter_name_from_source(path_or_id) if name is None else str(name)
        if name in self._ckpt.metas:
            raise InvalidArgumentError(f"the checkpoint already holds an adapter named {name!r}; pass another name "
                                       f"(CLI: --name) or remove the old one first")
        src = open_adapter(path_or_id, name=name, revision=revision, token=token, allow_pickle=allow_pickle)
        self._check_fits(src)
        opts = self._ckpt.config["options"]
        k, threshold = ((None, opts["variance_threshold"]) if opts["num_components"] == "auto"
                        else (int(opts["num_components"]), None))
        allocated = opts.get("target_ratio") is not None or opts.get("max_error") is not None
        compute, store_dtype = self._dtypes()
        work = copy_checkpoint(self._ckpt)
        kept_cores = {n: dict(work.loadings[n]) for n in self.adapter_names}  # projection-only: theirs stay
        cores = self._unpack_cores(work)
        names = list(self.adapter_names)
        work.loadings[name] = {}
        drifts: dict[str, dict[str, float]] = {n: {} for n in names}
        errors: dict[str, tuple[float, float]] = {}
        form = opts.get("factor_form", "scaled")
        for module in progress(self.modules, desc=f"adding {name}", enabled=show_progress):
            a, b = fold(*src.load_factors(module), src.modules[module].scale, self.device, compute, form)
            before = {n: self._rebuilt(work, n, module) for n in names} if update_basis else {}
            for side in SIDES:
                key, group = f"{module}.{side}", work.config["groups"][module][side]
                basis, mean = (work.components[f"{key}.basis"].to(self.device, compute),
                               work.components.get(f"{key}.mean"))
                mean = None if mean is None else mean.to(self.device, compute)
                old = {n: work.loadings[n][key].to(self.device, compute) for n in names}
                new_basis, new_mean, loads, energies = added_side(
                    old, basis, mean, columns([(a, b)], side)[0], k=int(group["k"]) if allocated else k,
                    threshold=None if allocated else threshold, update=update_basis)
                work.loadings[name][key] = store(loads[None], store_dtype)
                group["stacked_columns"] = int(group.get("stacked_columns", 0)) + src.modules[module].rank
                if not update_basis:  # the basis, the mean and the others' loadings stay as stored, bit for bit
                    continue
                int4 = int4_after(int(group["k"]), int(group.get("int4", 0)), int(new_basis.shape[1]))
                work.components[f"{key}.basis"] = store(new_basis, store_dtype, int4)
                if new_mean is not None:
                    work.components[f"{key}.mean"] = store(new_mean, store_dtype)
                for n in names:
                    work.loadings[n][key] = store(loads[n], store_dtype)
                group["k"] = int(new_basis.shape[1])
                group.pop("int4", None)
                if int4:
                    group["int4"] = int4
                if energies is not None:  # energies of old (as represented) and new data together
                    group["rank"] = int(energies.shape[0])
                    group["explained_variance"] = core.explained_variance(energies, group["k"])
            for n in before:
                drifts[n][module] = drift(before[n], self._rebuilt(work, n, module))
        work.metas[name] = {"ranks": {m: src.modules[m].rank for m in self.modules}}  # what _rebuilt needs
        self._pack_cores(work, cores)
        if not update_basis:  # nothing of the others moved: keep their stored tensors bit for bit
            work.loadings.update(kept_cores)
        for module in self.modules:
            a, b = fold(*src.load_factors(module), src.modules[module].scale, self.device, compute, form)
            rebuilt = self._rebuilt(work, name, module)
            errors[module] = dw_abs_and_norm(a, b, *as_written(rebuilt["lora_A"].mT, rebuilt["lora_B"],
                                                               src.modules[module].scale, src.dtype))
        self._rebound_errors(work, names, drifts)
        carried = src.load_carried()
        if carried:
            work.heads[name] = carried
        work.metas[name] = {
            "peft_config": src.config, "source": src.source, "dtype": str(src.dtype).removeprefix("torch."),
            "ranks": {m: src.modules[m].rank for m in self.modules},
            "scales": {m: src.modules[m].scale for m in self.modules},
            "original_bytes": src.file_bytes,
            "dw_error": {m: ratio(*errors[m]) for m in self.modules},
            "dw_norm": {m: errors[m][1] for m in self.modules},
        }
        work.config["adapters"].append(name)
        work.config["stats"]["dw_error"][name] = pooled(errors.values())
        work.config["stats"]["original_bytes"] = int(work.config["stats"].get("original_bytes", 0)) + src.file_bytes
        self._ckpt = work
        logger.info("added %r (%s): dW relative error %.3g", name,
                    "basis updated" if update_basis else "projected on the existing basis",
                    work.config["stats"]["dw_error"][name])
        return name

    def remove_adapter(self, name: str, *, show_progress: bool | None = None) -> None:
        """Drop one adapter and shrink the bases to what the remaining adapters use.

        Per group side: where the remaining adapters' loadings span fewer than its k directions, the basis is
        re-fitted on them (k shrinks; directions only the removed adapter used are no longer stored) and their
        loadings are rotated into it, which leaves their reconstructions unchanged up to rounding in the storage
        dtype (their stored dW errors become upper bounds, as for :meth:`add_adapter`). Where they still span all
        k, the side is kept exactly as stored: basis, mean and loadings bit for bit, and the stored errors. The
        removed adapter's leave-one-out figure is dropped too. Call :meth:`save_pretrained` to keep the result.
        """
        self._require_complete("remove_adapter")
        self._meta(name)
        rest = [n for n in self.adapter_names if n != name]
        if not rest:
            raise InvalidArgumentError(f"{name!r} is the only adapter left; a checkpoint needs at least one")
        compute, store_dtype = self._dtypes()
        work = copy_checkpoint(self._ckpt)
        cores = self._unpack_cores(work)
        removed_meta = work.metas.pop(name)
        drifts: dict[str, dict[str, float]] = {n: {} for n in rest}
        refitted: list[str] = []  # modules where at least one side shrank
        for module in progress(self.modules, desc=f"removing {name}", enabled=show_progress):
            before = None
            for side in SIDES:
                key, group = f"{module}.{side}", work.config["groups"][module][side]
                group["stacked_columns"] = int(group.get("stacked_columns", 0)) - int(removed_meta["ranks"][module])
                group["rank"] = int(group["k"])  # what the remaining adapters span (all k, unless it shrinks)
                group["explained_variance"] = None  # the removed data's share is no longer known
                basis = work.components[f"{key}.basis"].to(self.device, compute)
                mean = work.components.get(f"{key}.mean")
                mean = None if mean is None else mean.to(self.device, compute)
                refit = removed_side({n: work.loadings[n][key].to(self.device, compute) for n in rest}, basis, mean)
                if refit is None:  # k does not shrink: basis, mean and loadings stay as stored, bit for bit
                    continue
                if before is None:
                    before = {n: self._rebuilt(work, n, module) for n in rest}
                new_basis, new_mean, loads = refit
                int4 = int4_after(int(group["k"]), int(group.get("int4", 0)), int(new_basis.shape[1]))
                work.components[f"{key}.basis"] = store(new_basis, store_dtype, int4)
                if new_mean is not None:
                    work.components[f"{key}.mean"] = store(new_mean, store_dtype)
                for n in rest:
                    work.loadings[n][key] = store(loads[n], store_dtype)
                group["k"] = group["rank"] = int(new_basis.shape[1])
                group.pop("int4", None)
                if int4:
                    group["int4"] = int4
            if before is not None:
                refitted.append(module)
                for n in rest:
                    drifts[n][module] = drift(before[n], self._rebuilt(work, n, module))
        work.loadings.pop(name)
        self._pack_cores(work, [m for m in cores if m in refitted])
        for module in cores:  # no side shrank: the stored cores stay, bit for bit
            if module in refitted:
                continue
            for n in rest:
                for side in SIDES:
                    work.loadings[n].pop(f"{module}.{side}")
                work.loadings[n][f"{module}.core"] = self._ckpt.loadings[n][f"{module}.core"]
            work.config["groups"][module]["per_adapter"] = "core"
        work.heads.pop(name, None)
        work.config["adapters"].remove(name)
        work.config["stats"]["dw_error"].pop(name)
        if isinstance(work.config["stats"].get("leave_one_out"), dict):
            work.config["stats"]["leave_one_out"].pop(name, None)
        work.config["stats"]["original_bytes"] = (int(work.config["stats"].get("original_bytes", 0))
                                                  - int(removed_meta.get("original_bytes", 0)))
        self._rebound_errors(work, rest, drifts)
        self._ckpt = work
        logger.info("removed %r; %d adapters remain", name, len(rest))

    # ------------------------------------------------------------------ writing

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False) -> dict[str, int]:
        """Write the checkpoint (atomically: it appears whole or not at all).

        Args:
            save_directory: Target folder; must not exist unless `overwrite=True`.
            overwrite: Replace an existing checkpoint (the old one is removed only once the new one is complete).

        Returns:
            Bytes written per file (relative path -> bytes).
        """
        target = Path(os.path.abspath(os.fspath(save_directory)))  # before an in-place swap moves the cwd aside
        written = save_checkpoint(self._ckpt, target, overwrite=overwrite)
        self._ckpt.path = target
        logger.info("saved checkpoint to %s (%d bytes)", save_directory, sum(written.values()))
        return written

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, revision: str | None = None) -> str:
        """Upload the checkpoint to a Hub model repo (created if missing). Returns the commit URL."""
        with tempfile.TemporaryDirectory(prefix="lorashare-push-") as tmp:
            folder = Path(tmp) / "checkpoint"
            save_checkpoint(self._ckpt, folder)
            return push_checkpoint_to_hub(folder, repo_id, private=private, token=token,
                                          commit_message=commit_message or "Upload lorashare checkpoint",
                                          revision=revision)

