"""A report users can look at: one self-contained HTML page plus PNG plots of a checkpoint's figures.

:func:`write_report` writes ``index.html`` (headline figures, options, a per-adapter table), four plots
(explained variance and k per group, dW error per adapter and module, per-adapter dW error, bytes before
and after) and ``lorashare_report.json`` (the figures as data; it also marks the folder as a report, so
``overwrite=True`` never deletes a folder that is not one). The page references the images by relative
path and loads nothing from elsewhere: no JavaScript, no external CSS or fonts.

matplotlib draws the plots (``pip install "lorashare[report]"``). It is imported only here, and only
``matplotlib.figure.Figure`` is used (rendered by Agg), never ``pyplot``: the caller's backend and global
figure state are left alone.

Example:
    ```python
    from share_torch.report import write_report

    index = write_report("my_checkpoint", "my_checkpoint_report")  # or a SHAREModel
    print(index)  # .../my_checkpoint_report/index.html
    ```
"""

from __future__ import annotations

import html
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from share_core.errors import InvalidArgumentError, ShareError
from share_hf._io import atomic_directory, check_output_target

from ._summary import _human, _short, storage
from .model import SHAREModel
from .version import __version__

__all__ = ["ReportDependencyError", "write_report"]

#: A file every report folder holds: the figures as JSON, and the mark that lets `overwrite` replace it.
MARKER = "lorashare_report.json"
PLOTS = {
    "variance": "explained_variance.png",
    "heatmap": "dw_error_heatmap.png",
    "adapters": "dw_error_adapters.png",
    "bytes": "bytes.png",
}
LEAVE_ONE_OUT = "leave-one-out dW error (how well a new adapter like this would fit)"
_PART_ORDER = ["shared basis", "loadings", "heads and carried tensors", "metadata (json)"]
_COLORS = {"A": "#7aa6d6", "B": "#1f4e89", "rank": "#e3e3e3", "error": "#c0504d", "loo": "#8064a2",
           "original": "#9e9e9e", "shared basis": "#1f4e89", "loadings": "#4bacc6",
           "heads and carried tensors": "#f79646", "metadata (json)": "#9bbb59"}
_DPI = 110


class ReportDependencyError(ShareError, ImportError):
    """The report needs matplotlib, which is not installed (``pip install "lorashare[report]"``)."""


def write_report(model_or_path: SHAREModel | str | os.PathLike, output_dir: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Write an HTML report of a checkpoint: figures, a per-adapter table and PNG plots.

    The folder is written atomically (it appears whole or not at all); an existing report is replaced
    only with `overwrite`, and only once the new one is complete.

    Args:
        model_or_path: A :class:`SHAREModel`, or a checkpoint folder (or Hub id) to load.
        output_dir: The folder to create: ``index.html``, the PNG plots and ``lorashare_report.json``.
        overwrite: Replace an existing report folder at `output_dir`.

    Returns:
        The path of ``index.html`` inside `output_dir`.

    Raises:
        CheckpointExistsError: `output_dir` exists (without `overwrite`), is a file, or is a non-empty
            folder that is not a lorashare report.
        ReportDependencyError: matplotlib is not installed.
        CheckpointError, AdapterNotFoundError: `model_or_path` is not a readable checkpoint.
        WriteError: The folder cannot be written (disk full, permission denied, ...).

    Example:
        ```python
        write_report(share, "report", overwrite=True)
        ```
    """
    if not isinstance(model_or_path, (SHAREModel, str, os.PathLike)):
        raise InvalidArgumentError(f"write_report expects a SHAREModel or a checkpoint folder, found "
                                   f"{type(model_or_path).__name__}; pass SHAREModel.from_pretrained(...) or a path")
    target = check_output_target(output_dir, overwrite=overwrite, marker=MARKER, what="report")
    figure_class = _figure_class()
    share = model_or_path if isinstance(model_or_path, SHAREModel) else SHAREModel.from_pretrained(model_or_path)
    data = _collect(share)
    with atomic_directory(target, overwrite=overwrite, marker=MARKER, what="report") as tmp:
        with warnings.catch_warnings():  # names in scripts DejaVu Sans lacks draw as boxes, warned per glyph
            warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            for key, filename in PLOTS.items():
                _DRAW[key](figure_class, data).savefig(tmp / filename, dpi=_DPI, metadata={"Software": None})
        (tmp / "index.html").write_text(render_html(data), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(data["stats"], indent=2, sort_keys=True, default=str) + "\n",
                                  encoding="utf-8")
    return target / "index.html"


def _figure_class():
    """matplotlib's `Figure`, or a :class:`ReportDependencyError` naming the install command."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportDependencyError(
            f"the report draws its plots with matplotlib, which cannot be imported here ({exc}). "
            'Fix: pip install "lorashare[report]"'
        ) from exc
    return Figure


# ------------------------------------------------------------------------------------- figures


def _collect(share: SHAREModel) -> dict[str, Any]:
    """Everything the page and the plots show, read once through the model's figures."""
    stats = share.stats()
    names = stats["adapters"]
    modules = [g["module"] for g in stats["groups"]]
    per_module = {n: share.reconstruction_error(n)["per_module"] for n in names}
    metas = {n: share._meta(n) for n in names}
    prefix, labels = module_labels(modules)
    return {
        "stats": stats,
        "modules": modules,
        "labels": labels,
        "prefix": prefix,
        "errors": {n: [float(per_module[n][m]["dw"]) for m in modules] for n in names},
        "ranks": {n: sorted({int(r) for r in metas[n].get("ranks", {}).values()}) for n in names},
        "upper_bound": {n: bool(metas[n].get("dw_error_is_upper_bound")) for n in names},
        "original_bytes": {n: int(metas[n].get("original_bytes", 0)) for n in names},
        "leave_one_out": stats.get("leave_one_out"),
        "format_version": share.config.get("format_version"),
        "library_version": share.config.get("library_version"),
    }


def module_labels(modules: Sequence[str]) -> tuple[str, list[str]]:
    """Short axis labels: the dotted prefix all modules share is cut (and returned to name the axis).

    ``["base_model.model.bert.encoder.layer.0.attention.self.query", ...layer.1...]`` ->
    ``("bert.encoder.layer", ["0.attention.self.query", "1.attention.self.query"])``.
    """
    parts = [_short(m).split(".") for m in modules]
    if not parts:
        return "", []
    common = 0
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        common += 1
    common = min(common, min(len(p) for p in parts) - 1)  # keep at least one token per label
    return ".".join(parts[0][:common]), [".".join(p[common:]) for p in parts]


def _text(value: object) -> str:
    """A label matplotlib shows as written: `$` would start mathtext."""
    return str(value).replace("$", r"\$")


def _fontsize(count: int) -> float:
    return 9.0 if count <= 30 else 7.5 if count <= 60 else 6.0


def _rows_height(count: int) -> float:
    """Inches for `count` rows of bars or cells (more rows get thinner, so big models stay viewable)."""
    per_row = 0.34 if count <= 30 else 0.22 if count <= 80 else 0.14
    return min(1.6 + per_row * count, 60.0)


def _module_axis(data: dict[str, Any]) -> str:
    return _text(f"module ({data['prefix']}.…)" if data["prefix"] else "module")


def _draw_variance(figure_class, data: dict[str, Any]):
    """Left: explained variance at k per group; right: k kept against the group's rank."""
    groups, labels = data["stats"]["groups"], data["labels"]
    n, size = len(groups), _fontsize(len(groups))
    fig = figure_class(figsize=(10, _rows_height(n)), layout="constrained")
    ax_var, ax_k = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    y = list(range(n))
    for offset, side in ((-0.2, "A"), (0.2, "B")):
        values = [g[f"explained_variance_{side}"] for g in groups]
        ax_var.barh([i + offset for i in y], [v if v is not None else 0 for v in values], height=0.4,
                    color=_COLORS[side], label=f"lora_{side}")
        for i, v in enumerate(values):
            if v is None:
                ax_var.text(0.01, i + offset, "n/a", va="center", fontsize=size - 1)
        ax_k.barh([i + offset for i in y], [g[f"rank_{side}"] for g in groups], height=0.4, color=_COLORS["rank"],
                  label="rank" if side == "A" else None)
        ax_k.barh([i + offset for i in y], [g[f"k_{side}"] for g in groups], height=0.4, color=_COLORS[side],
                  label=f"k (lora_{side})")
    threshold = data["stats"]["options"].get("variance_threshold")
    if data["stats"]["options"].get("num_components") == "auto" and isinstance(threshold, (int, float)):
        ax_var.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax_var.set_yticks(y, [_text(label) for label in labels], fontsize=size)
    ax_var.set_ylim(n - 0.5, -0.5)  # first module on top, no empty margin rows
    ax_var.set_xlim(0, 1)
    ax_var.set_xlabel("explained variance at the kept k (fraction of energy)")
    ax_var.set_ylabel(_module_axis(data))
    ax_k.set_xlabel("components kept (k) of the stacked rank")
    for ax in (ax_var, ax_k):
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Shared basis per module and side: variance explained and k")
    return fig


def _draw_heatmap(figure_class, data: dict[str, Any]):
    """Rows: modules; columns: adapters; colour: dW relative error of that module of that adapter."""
    names, labels = data["stats"]["adapters"], data["labels"]
    matrix = [[data["errors"][n][i] for n in names] for i in range(len(labels))]
    rows, cols = len(labels), len(names)
    size = _fontsize(max(rows, cols))
    label_width = max([len(_text(n)) for n in names] + [4])
    width = min(max(6.0, 3.0 + 0.7 * cols + 0.05 * max(len(lb) for lb in labels)), 30.0)
    fig = figure_class(figsize=(width, _rows_height(rows) + 0.06 * label_width), layout="constrained")
    ax = fig.subplots()
    top = max((v for row in matrix for v in row), default=0.0) or 1.0
    image = ax.imshow(matrix, aspect="auto", cmap="magma_r", vmin=0.0, vmax=top, interpolation="nearest")
    ax.set_xticks(range(cols), [_text(n) for n in names], rotation=40, ha="right", rotation_mode="anchor",
                  fontsize=size)
    ax.set_yticks(range(rows), [_text(label) for label in labels], fontsize=size)
    ax.set_ylabel(_module_axis(data))
    ax.set_xlabel("adapter")
    if rows * cols <= 400:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=size - 1.5,
                        color="white" if v > 0.55 * top else "black")
    bar = fig.colorbar(image, ax=ax, shrink=min(1.0, 8.0 / max(rows, 1) + 0.3))
    bar.set_label("dW relative error ‖dW − dŴ‖ / ‖dW‖")
    ax.set_title("dW relative error per adapter and module (darker is worse)")
    return fig


def _draw_adapters(figure_class, data: dict[str, Any]):
    """One bar per adapter (its pooled dW error), the mean as a line, leave-one-out beside it if known."""
    stats = data["stats"]
    names = stats["adapters"]
    loo = data["leave_one_out"] or {}
    n, size = len(names), _fontsize(len(names))
    fig = figure_class(figsize=(9, _rows_height(n)), layout="constrained")
    ax = fig.subplots()
    height = 0.4 if loo else 0.7
    offset = 0.2 if loo else 0.0
    errors = [stats["dw_error"][name] for name in names]
    ax.barh([i - offset for i in range(n)], errors, height=height, color=_COLORS["error"],
            label="dW relative error (compressed)")
    if loo:
        values = [loo.get(name) for name in names]
        ax.barh([i + offset for i in range(n)], [v if v is not None else 0 for v in values], height=height,
                color=_COLORS["loo"], label="leave-one-out dW error")
    ax.axvline(stats["dw_error_mean"], color="black", linestyle="--", linewidth=1,
               label=f"mean {stats['dw_error_mean']:.3e}")
    if n <= 40:
        for i, v in enumerate(errors):
            ax.text(v, i - offset, f"{v:.3e} ", va="center", ha="right", fontsize=size - 1, color="white")
    ax.set_yticks(range(n), [_text(name) for name in names], fontsize=size)
    ax.set_ylim(n - 0.5, -0.5)
    ax.margins(x=0.05)
    ax.set_xlabel("dW relative error over all modules ‖dW − dŴ‖ / ‖dW‖")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.suptitle("dW relative error per adapter (shorter is better)")
    return fig


def _parts(by_part: dict[str, int]) -> list[tuple[str, int]]:
    order = _PART_ORDER + sorted(p for p in by_part if p not in _PART_ORDER)
    return [(p, by_part[p]) for p in order if p in by_part]


def _draw_bytes(figure_class, data: dict[str, Any]):
    """Two bars on one scale: the adapters' files (one segment per adapter) and the checkpoint by part."""
    b = data["stats"]["bytes"]
    fig = figure_class(figsize=(10, 3.2), layout="constrained")
    ax = fig.subplots()
    left = 0
    for value in data["original_bytes"].values():
        ax.barh(0, value, left=left, color=_COLORS["original"], edgecolor="white", linewidth=0.8)
        left += value
    left = 0
    for part, value in _parts(b["by_part"]):
        ax.barh(1, value, left=left, color=_COLORS.get(part, "#bdbdbd"), edgecolor="white", linewidth=0.8,
                label=f"{part}: {_human(value)}")
        left += value
    ax.text(b["original"], 0, f" {_human(b['original'])}", va="center", fontsize=9)
    ax.text(b["checkpoint"], 1, f" {_human(b['checkpoint'])}", va="center", fontsize=9)
    ax.set_yticks([0, 1], [f"original adapter files\n({data['stats']['num_adapters']}, one segment each)",
                           "checkpoint"])
    ax.invert_yaxis()
    ax.set_xlim(0, max(b["original"], b["checkpoint"], 1) * 1.15)
    ax.set_xlabel("bytes on disk")
    ax.xaxis.set_major_formatter(lambda value, _pos: _human(value))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=4, fontsize=8, frameon=False)
    ax.set_title(f"Bytes: {_human(b['original'])} -> {_human(b['checkpoint'])} ({b['ratio']:.2f}x smaller)")
    return fig


_DRAW = {"variance": _draw_variance, "heatmap": _draw_heatmap, "adapters": _draw_adapters, "bytes": _draw_bytes}


# ---------------------------------------------------------------------------------------- page


def headline(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures `summary()` leads with, formatted as it prints them (label, text)."""
    b = stats["bytes"]
    k = f"{stats['k_min']}" if stats["k_min"] == stats["k_max"] else f"{stats['k_min']} to {stats['k_max']}"
    return [
        ("adapters", f"{stats['num_adapters']}"),
        ("LoRA modules", f"{stats['num_modules']} ({2 * stats['num_modules']} groups)"),
        ("k per group", k),
        ("storage", storage(stats)),
        ("dW relative error", f"mean {stats['dw_error_mean']:.3e}, max {stats['dw_error_max']:.3e}"),
        *_held_out(stats),
        ("bytes", f"original adapter files {_human(b['original'])} ({b['original']:,}) -> checkpoint "
                  f"{_human(b['checkpoint'])} ({b['checkpoint']:,}), {b['ratio']:.2f}x smaller"),
    ]


def _held_out(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The leave-one-out mean, where `stats()` carries the estimate (checkpoints built with it)."""
    values = [v for v in (stats.get("leave_one_out") or {}).values() if isinstance(v, (int, float))]
    if not values:
        return []
    mean = stats.get("leave_one_out_mean", sum(values) / len(values))
    return [("leave-one-out dW error", f"mean {mean:.3e} (how well a new adapter like these would fit)")]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _value(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True, default=str)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], *, numeric_from: int = 1) -> str:
    """An HTML table (every cell escaped) in a scrolling wrapper, so narrow windows scroll it, not the page."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td{' class=num' if j >= numeric_from else ''}>{_esc(c)}</td>"
                         for j, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _adapter_rows(data: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    stats, loo = data["stats"], data["leave_one_out"]
    header = ["adapter", "LoRA rank r", "dW relative error", "worst module (its error)", "original files"]
    if loo is not None:
        header.append(LEAVE_ONE_OUT)
    rows = []
    for name in stats["adapters"]:
        errors = data["errors"][name]
        worst = max(range(len(errors)), key=errors.__getitem__) if errors else None
        error = f"{stats['dw_error'][name]:.3e}" + (" (upper bound)" if data["upper_bound"][name] else "")
        row = [name, ", ".join(map(str, data["ranks"][name])), error,
               f"{data['labels'][worst]} ({errors[worst]:.3e})" if worst is not None else "",
               f"{_human(data['original_bytes'][name])} ({data['original_bytes'][name]:,})"]
        if loo is not None:
            value = loo.get(name)
            row.append(f"{value:.3e}" if isinstance(value, (int, float)) else "n/a")
        rows.append(row)
    return header, rows


def _group_rows(data: dict[str, Any]) -> list[list[object]]:
    def var(value):
        return f"{value:.4f}" if value is not None else "n/a"
    return [[label, g["k_A"], g["k_B"], g["rank_A"], g["rank_B"], var(g["explained_variance_A"]),
             var(g["explained_variance_B"])] for label, g in zip(data["labels"], data["stats"]["groups"])]


_KNOWN_STATS = {"adapters", "num_adapters", "num_modules", "base_model", "options", "k_min", "k_max", "groups",
                "dw_error", "dw_error_mean", "dw_error_max", "bytes", "leave_one_out", "leave_one_out_mean"}

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0; padding: 1rem; color: #1d1d1f; background: #fff; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.sub { color: #555; margin: 0 0 1rem; overflow-wrap: anywhere; }
dl.headline { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; margin: 0; }
dl.headline dt { font-weight: 600; }
dl.headline dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
@media (max-width: 560px) { dl.headline { grid-template-columns: 1fr; } dl.headline dd { margin-bottom: .4rem; } }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: .9rem; max-width: 75ch; }
pre { background: #f6f6f6; padding: .5rem; overflow-x: auto; font-size: .85rem; }
"""

_CAPTIONS = {
    "variance": "Left: the fraction of each group's energy (sum of squared singular values of the stacked "
                "LoRA factors) that its kept basis explains; 1.0 means nothing was lost. Right: the k "
                "components kept (dark) out of the stacked rank (grey). A short bar on the left with k far "
                "below the rank on the right is where the compression loses most.",
    "heatmap": "Each cell is ‖dW − dŴ‖ / ‖dW‖ for one module of one adapter, where dW = scale · B · A is the "
               "adapter's weight update and dŴ the one rebuilt from the checkpoint. 0 is exact. A dark "
               "column is an adapter the shared basis fits poorly; a dark row is a module whose adapters "
               "have little in common.",
    "adapters": "The same error pooled over all modules of each adapter (the figure lorashare info "
                "prints), with the mean over adapters dashed.",
    "bytes": "Top: the original adapter files, one segment per adapter. Bottom: the checkpoint as written, "
             "by part: the shared basis, the per-adapter loadings, heads and other tensors carried as they "
             "are, and the JSON metadata.",
}
_TITLES = {"variance": "Explained variance and k per group", "heatmap": "dW error per adapter and module",
           "adapters": "dW error per adapter", "bytes": "Bytes before and after"}


def render_html(data: dict[str, Any]) -> str:
    """The report page (every text from the checkpoint escaped; images by relative path)."""
    stats = data["stats"]
    title = f"lorashare report: {stats['base_model'] or 'checkpoint'}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body><main>",
        "<h1>lorashare report</h1>",
        f'<p class="sub">base model: {_esc(stats["base_model"] or "(not recorded)")} · checkpoint format '
        f"{_esc(data['format_version'])}, written by lorashare {_esc(data['library_version'])} · report by "
        f"lorashare {_esc(__version__)}</p>",
        '<dl class="headline">',
        *(f"<dt>{_esc(label)}</dt><dd>{_esc(text)}</dd>" for label, text in headline(stats)),
        "</dl>",
        "<h2>Adapters</h2>", _table(*_adapter_rows(data)),
        "<h2>Options</h2>",
        _table(["option", "value"], [[k, _value(v)] for k, v in sorted(stats["options"].items())], numeric_from=2),
    ]
    for key, filename in PLOTS.items():
        parts += [f"<h2>{_esc(_TITLES[key])}</h2>", "<figure>",
                  f'<a href="{_esc(filename)}"><img src="{_esc(filename)}" alt="{_esc(_TITLES[key])}"></a>',
                  f"<figcaption>{_esc(_CAPTIONS[key])}</figcaption>", "</figure>"]
        if key == "variance":
            parts += ["<details><summary>the numbers, per group</summary>",
                      _table(["module", "k(A)", "k(B)", "rank(A)", "rank(B)", "var(A)", "var(B)"],
                             _group_rows(data)), "</details>"]
    extra = {k: v for k, v in stats.items() if k not in _KNOWN_STATS}
    if extra:
        parts += ["<h2>Other figures</h2>",
                  f"<pre>{_esc(json.dumps(extra, indent=2, sort_keys=True, default=str))}</pre>"]
    parts += ["</main></body>", "</html>", ""]
    return "\n".join(parts)
