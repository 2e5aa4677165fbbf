"""The headline figures of a checkpoint, as a dict and as the table `summary()` and `lorashare info` print."""

from __future__ import annotations

import math
import re
from typing import Any

from share_hf.checkpoint import Checkpoint

_PREFIX = "base_model.model."


def natural_key(name: str) -> list:
    """Sort 'layer.2' before 'layer.10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _part(path: str) -> str:
    if path.endswith("loadings.safetensors"):
        return "loadings"
    if path.endswith("classifier_head.safetensors"):
        return "heads and carried tensors"
    if path.endswith(".safetensors"):
        return "shared basis"
    return "metadata (json)"


def build_summary(ckpt: Checkpoint, file_bytes: dict[str, int]) -> dict[str, Any]:
    """Collect the figures users ask about from a checkpoint and its exact on-disk byte counts.

    Args:
        ckpt: The checkpoint (possibly partially loaded: only its adapters are counted).
        file_bytes: Relative path -> bytes as written (every tensor, header and JSON file).
    """
    config = ckpt.config
    names = [n for n in config["adapters"] if n in ckpt.metas]
    groups = []
    for module in sorted(config["groups"], key=natural_key):
        g = config["groups"][module]
        groups.append({
            "module": module,
            "d_in": g["d_in"], "d_out": g["d_out"],
            **{f"{key}_{side[-1]}": g[side].get(key) for side in ("lora_A", "lora_B")
               for key in ("k", "rank", "explained_variance")},
            "int4_A": g["lora_A"].get("int4", 0), "int4_B": g["lora_B"].get("int4", 0),
            "per_adapter": g.get("per_adapter", "loadings"),
        })
    by_part: dict[str, int] = {}
    for path, n in file_bytes.items():
        by_part[_part(path)] = by_part.get(_part(path), 0) + n
    original = sum(int(ckpt.metas[n]["original_bytes"]) for n in names)
    written = sum(file_bytes.values())
    errors = {n: config["stats"]["dw_error"][n] for n in names}
    held_out = config["stats"].get("leave_one_out")
    held_out = {n: held_out[n] for n in names if n in held_out} if isinstance(held_out, dict) else None
    ks = [g[f"k_{s}"] for g in groups for s in "AB"]
    return {
        "adapters": names,
        "num_adapters": len(names),
        "num_modules": len(groups),
        "base_model": config.get("base_model_name_or_path"),
        "options": config.get("options", {}),
        "k_min": min(ks) if ks else 0,
        "k_max": max(ks) if ks else 0,
        "groups": groups,
        "dw_error": errors,
        "dw_error_mean": sum(errors.values()) / len(errors) if errors else 0.0,
        "dw_error_max": max(errors.values()) if errors else 0.0,
        **({"leave_one_out": held_out,
            "leave_one_out_mean": sum(held_out.values()) / len(held_out) if held_out else 0.0} if held_out is not None
           else {}),
        "bytes": {
            "original": original,
            "checkpoint": written,
            "ratio": original / written if written else 0.0,
            "by_part": by_part,
            # loaded with adapters=[...]: the figures are those of a checkpoint of the loaded adapters alone
            "loaded_adapters_only": len(names) < len(config["adapters"]),
            "adapters_in_checkpoint": len(config["adapters"]),
        },
    }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _short(module: str) -> str:
    return module[len(_PREFIX):] if module.startswith(_PREFIX) else module


def _ratio(value: float | None) -> str:
    """Explained variance, or n/a where an update (remove_adapter) made it unknown."""
    return f"{value:>7.4f}" if value is not None else f"{'n/a':>7}"


def _target(stats: dict[str, Any]) -> str:
    """The allocation's target. Its figures are from compression: where adapters were added or removed since
    (each group kept its k), the current figure differs, and both are shown rather than a stale one."""
    opts = stats["options"]
    allocation = opts.get("allocation") or {}
    if opts.get("target_ratio") is not None:
        now = stats["bytes"]["ratio"]
        return (f", k per module chosen for target ratio {opts['target_ratio']:g}"
                + (f" (at compression; {now:.2f}x now, after adapters were added or removed)"
                   if now < opts["target_ratio"] else ""))
    if opts.get("max_error") is not None:
        achieved = allocation.get("achieved_max_error")
        now = stats["dw_error_max"]
        if achieved is None:
            figure = ""
        elif f"{achieved:.3g}" == f"{now:.3g}":
            figure = f" (achieved {achieved:.3g})"
        else:
            figure = (f" (achieved {achieved:.3g} at compression; the largest stored dW error is {now:.3g} now, "
                      f"after adapters were added or removed)")
        return f", k per module chosen for max dW error {opts['max_error']:g}" + figure
    return ""


def storage(stats: dict[str, Any]) -> str:
    """The storage dtype, and for mixed storage how many basis columns are in int4."""
    dtype = stats["options"].get("dtype")
    if dtype != "mixed":
        return f"{dtype}"
    int4 = sum(g["int4_A"] + g["int4_B"] for g in stats["groups"])
    return f"{dtype} ({int4} of {sum(g['k_A'] + g['k_B'] for g in stats['groups'])} basis columns in int4)"


def format_summary(stats: dict[str, Any]) -> str:
    """The human table for `summary()` and `lorashare info` (figures from :func:`build_summary`)."""
    opts = stats["options"]
    lines = [
        f"lorashare checkpoint: {stats['num_adapters']} adapters, {stats['num_modules']} LoRA modules "
        f"({2 * stats['num_modules']} groups)",
        f"base model: {stats['base_model'] or '(not recorded)'}",
        "options: "
        + ("k allocated per module" if opts.get("target_ratio") is not None or opts.get("max_error") is not None
           else f"num_components={opts.get('num_components')}"
           + (f" (variance >= {opts.get('variance_threshold')})" if opts.get("num_components") == "auto" else ""))
        + f", centered={'yes' if opts.get('center') else 'no'}, storage dtype={storage(stats)}",
        f"factor form: {opts.get('factor_form', 'scaled')}, per adapter: {opts.get('per_adapter', 'loadings')}"
        + (f", refine steps: {opts['refine_steps']}" if opts.get("refine_steps") else "")
        + _target(stats),
        "",
    ]
    width = max([len(_short(g["module"])) for g in stats["groups"]] + [6])
    lines.append(f"{'module':<{width}}  {'k(A)':>5} {'k(B)':>5}  {'rank(A)':>7} {'rank(B)':>7}  "
                 f"{'var(A)':>7} {'var(B)':>7}  stored")
    for g in stats["groups"]:
        lines.append(f"{_short(g['module']):<{width}}  {g['k_A']:>5} {g['k_B']:>5}  {g['rank_A']:>7} "
                     f"{g['rank_B']:>7}  {_ratio(g['explained_variance_A'])} {_ratio(g['explained_variance_B'])}  "
                     f"{g.get('per_adapter', 'loadings')}")
    lines.append("")
    width = max([len(n) for n in stats["adapters"]] + [7])
    held_out = stats.get("leave_one_out")
    lines.append(f"{'adapter':<{width}}  dW relative error" + ("  leave-one-out" if held_out is not None else ""))
    for name, err in stats["dw_error"].items():
        figure = "" if held_out is None else (f"          {held_out[name]:.3e}" if name in held_out
                                              else f"          {'n/a':>9}")
        lines.append(f"{name:<{width}}  {err:.3e}" + figure)
    lines.append(f"{'mean':<{width}}  {stats['dw_error_mean']:.3e}   (max {stats['dw_error_max']:.3e})")
    zero = [name for name, err in stats["dw_error"].items() if math.isinf(err)]
    if zero:
        finite = [err for err in stats["dw_error"].values() if not math.isinf(err)]
        lines.append(f"inf: {', '.join(zero)} {'has' if len(zero) == 1 else 'have'} dW = 0 (an untrained adapter: "
                     "B = 0?), and a centered basis rebuilds it as its residue of the mean, not as zero"
                     + (f"; the other adapters: mean {sum(finite) / len(finite):.3e} (max {max(finite):.3e})"
                        if finite else ""))
    if held_out is not None and len(held_out) < len(stats["dw_error"]):
        lines.append("leave-one-out n/a: the adapter was added after compression, so no figure was measured for it")
    if held_out:
        lines.append(f"leave-one-out: a new adapter like these, projected on this basis without refitting, would get a "
                     f"dW error of about {stats['leave_one_out_mean']:.3e} (in-set mean {stats['dw_error_mean']:.3e}); "
                     + ("projecting new adapters (lorashare add --project-only) is fine" if stats["leave_one_out_mean"]
                        <= 1.5 * stats["dw_error_mean"] + 0.02 else "refit (add, the default) for new adapters"))
    lines.append("")
    b = stats["bytes"]
    lines.append(f"bytes: original adapter files {_human(b['original'])} ({b['original']:,}) -> checkpoint "
                 f"{_human(b['checkpoint'])} ({b['checkpoint']:,}), {b['ratio']:.2f}x smaller"
                 + (f"; these are the {len(stats['adapters'])} loaded adapters' figures (of "
                    f"{b['adapters_in_checkpoint']} in the checkpoint), as a checkpoint of them alone would be "
                    "written" if b.get("loaded_adapters_only") else ""))
    lines.append("  " + ", ".join(f"{part} {_human(n)}" for part, n in sorted(b["by_part"].items())))
    return "\n".join(lines)
