"""Quality at equal bytes: dW error (and, on the real adapters, accuracy) against checkpoint bytes, per method.

    .venv/bin/python benchmarks/quality.py --scenario roberta-100
    .venv/bin/python benchmarks/quality.py --scenario llama-8            # first layer only (--layers 1), see below
    .venv/bin/python benchmarks/quality.py --scenario real               # the 5 example adapters, with accuracy
    .venv/bin/python benchmarks/quality.py --scenario real \\
        --lorashare '{"name": "balanced", "num_components": "{k}", "factor_form": "balanced"}' \\
        --lorashare '{"name": "ratio", "target_ratio": "{ratio}"}' --tag new-modes

Every method is swept over its own size knob; each point is a checkpoint written to disk by the method's
own process (the drivers of compare.py, each under ``--timeout``), every adapter is reconstructed to a PEFT
folder by the method's own reconstruct path, and the dW error of each adapter is computed from the original
and reconstructed folders alone by compare.py's evaluator (``compare.dw_error``, float64, pooled over the
adapter's modules). Then, at each byte budget ``original bytes / R`` (R = 10, and 4 for ``real``), each
method's best point whose checkpoint bytes are within the budget is reported.

Methods
-------
- lorashare (this checkout), one row per option set. An option set is a JSON object: ``name`` plus keyword
  arguments of ``SHAREModel.from_adapters``. A string value ``"{k}"`` is replaced by each value of the k sweep
  (``--ks``), ``"{ratio}"`` by each budget ratio (and ``--ratios``), ``"{err}"`` by each ``--max-errors``
  value; any other ``"{name}"`` by the values of ``--sweep name=v1,v2``. An option set without placeholder is
  run once. A keyword the installed ``from_adapters`` does not accept is reported as "not available at commit
  <hash>" and that option set is skipped; a value the library rejects is reported with its message.
  Defaults: ``{"name": "lorashare float32", "num_components": "{k}", "dtype": "float32"}`` and the same with
  ``bfloat16``.
- peers (``--peers``): lorashare==0.1.3 and vlora-dev==1.0.0 (``vlora-dev+f32`` casts bf16 factors to
  float32 first, as in compare.py), through ``benchmarks/peers/drive_*.py`` in ``benchmarks/peers/.venv``,
  swept over their ``-k`` (``--peer-ks``).

For k sweeps, after the first pass every budget is bracketed by bisection on k (``--refine`` steps per
budget and method), so that "best point within the budget" is the largest k that fits, not an artefact of
the grid. A method stops its sweep at its first timeout (a larger k is not faster for any of them) or at a
failure on its first point.

References (computed here, not by any method)
---------------------------------------------
- per-adapter truncated SVD at equal bytes: every adapter stored alone as its best singular triplets
  (``s B A`` per module), chosen across its modules by energy per byte, at float32 and at bfloat16 (bf16
  rounding not counted), plus the adapter's non-LoRA tensors (heads) at their own size. No sharing: any
  shared basis worth having must beat it.
- synthetic sets only: the generator's noise. Each factor carries ``noise`` (0.15) of its energy as
  per-adapter isotropic noise, so dW = (signal + noise_B)(signal + noise_A) keeps about ``(1 - noise)^2`` of
  its energy in the shared-signal product: error about ``sqrt(1 - (1 - noise)^2)`` (0.527) for a
  reconstruction of the signal alone. Measured too: every adapter's A and B projected onto the generator's
  own subspaces (``synthetic.Subspaces``), with the bytes that representation would take (bases d x s per
  group plus s x r loadings per adapter and group). A method can go below it only by also storing noise.

Outputs: ``benchmarks/results/quality-<scenario>[-<layers>layers][-<tag>].{md,json}`` (the budget table, the
whole curve per method, the references) and ``.png`` (error against bytes) when matplotlib is installed.

llama-8 runs on the first ``--layers`` layers (default 1) of the Llama-7B-shaped set: lorashare 0.1.3
eigendecomposes a 4096 x 4096 covariance per (module, side), about 10 s each here, the same for every k,
and does not finish the full 32 layers in 600 s.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

import compare  # noqa: E402  (run_limited, dw_error, folder_bytes, code_version, TOOLS, ensure_adapters)

SCENARIOS = {
    "roberta-100": {"kind": "synthetic", "shape": "roberta-base", "n": 100, "budgets": [10],
                    "ks": [8, 16, 24, 32, 48, 64, 96], "peer_ks": [2, 4, 8, 12, 16, 32],
                    "peers": "lorashare-0.1.3,vlora-dev"},
    "llama-8": {"kind": "synthetic", "shape": "llama-7b", "n": 8, "budgets": [10], "layers": 1,
                "ks": [2, 4, 8, 12, 16, 32], "peer_ks": [1, 2, 4, 8],
                "peers": "lorashare-0.1.3,vlora-dev,vlora-dev+f32"},
    "real": {"kind": "real", "budgets": [10, 4], "ks": [1, 2, 3, 4, 6, 8, 12, 16, 24, 40],
             "peer_ks": [1, 2, 3, 4, 5, 8, 16], "peers": "lorashare-0.1.3,vlora-dev"},
}

DEFAULT_OPTION_SETS = [
    {"name": "lorashare float32", "num_components": "{k}", "dtype": "float32"},
    {"name": "lorashare bfloat16", "num_components": "{k}", "dtype": "bfloat16"},
]


# ------------------------------------------------------------------ lorashare compress (own process)


def compress_lorashare(out: str, options: dict, adapters: list[str]) -> int:
    """Child process: SHAREModel.from_adapters(adapters, **options).save_pretrained(out); one BENCH_JSON line."""
    from _protocol import Clock

    from share_torch import SHAREModel

    clock = Clock()
    accepted = inspect.signature(SHAREModel.from_adapters).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    missing = [key for key in options if key not in accepted and not has_var_kw]
    if missing:
        clock.emit(unavailable=missing)
        return 3
    try:
        model = SHAREModel.from_adapters(adapters, show_progress=False, **options)
    except TypeError as exc:  # e.g. a keyword accepted through **kwargs and refused later
        clock.emit(rejected=f"{type(exc).__name__}: {exc}")
        return 4
    except Exception as exc:  # noqa: BLE001 - a ShareError for a value this version refuses
        if type(exc).__name__.endswith("Error") and "Argument" in type(exc).__name__:
            clock.emit(rejected=f"{type(exc).__name__}: {exc}")
            return 4
        raise
    clock.mark("build")
    model.save_pretrained(out)
    clock.mark("save")
    info = {}
    try:
        stats = model.stats()
        info = {key: stats.get(key) for key in ("k_min", "k_max")}
        info["reported_dw_error"] = stats.get("dw_error")
        info["reported_bytes"] = stats.get("bytes")
    except Exception as exc:  # noqa: BLE001 - stats are informative only
        info = {"stats_error": repr(exc)}
    import share_torch

    info["share_torch"] = share_torch.__file__
    clock.emit(**info)
    return 0


# ------------------------------------------------------------------------------------ the sweep


def substitute(value, values: dict):
    if isinstance(value, str):
        for name, v in values.items():
            if value == "{" + name + "}":
                return v
        if "{" in value:
            try:
                return value.format(**values)
            except (KeyError, IndexError, ValueError):
                return value
        return value
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, values) for k, v in value.items()}
    return value


def placeholders(options: dict) -> list[str]:
    found: list[str] = []

    def walk(v):
        if isinstance(v, str):
            import string
            for _, field, _, _ in string.Formatter().parse(v):
                if field and field not in found:
                    found.append(field)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(options)
    return found


class Method:
    """One row: a lorashare option set or a peer; runs points, remembers them."""

    def __init__(self, name: str, kind: str, options: dict | None = None, tool: str | None = None) -> None:
        self.name, self.kind, self.options, self.tool = name, kind, options, tool
        self.points: list[dict] = []
        self.status: str | None = None  # why the sweep stopped early, if it did

    def label(self, values: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


class Runner:
    def __init__(self, args, adapters: list[Path], work: Path, original_bytes: int, keep_rebuilt: bool) -> None:
        self.args, self.adapters, self.work = args, adapters, work
        self.original_bytes = original_bytes
        self.keep_rebuilt = keep_rebuilt
        self.counter = itertools.count()

    def run_point(self, m: Method, values: dict) -> dict | None:
        """Compress + reconstruct + score one setting; returns the point (also appended), None if skipped."""
        if m.status:
            return None
        for p in m.points:
            if p["values"] == values:
                return p
        i = next(self.counter)
        slug = f"{i:03d}"
        ckpt = self.work / f"{slug}.ckpt"
        rebuilt = self.work / f"{slug}.rebuilt"
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(rebuilt, ignore_errors=True)
        names = [a.name for a in self.adapters]
        point = {"method": m.name, "values": values, "setting": m.label(values), "slug": slug}
        if m.kind == "lorashare":
            opts = substitute(m.options, values)
            point["options"] = opts
            cmd = [sys.executable, str(Path(__file__).resolve()), "_compress-lorashare", str(ckpt),
                   json.dumps(opts), *map(str, self.adapters)]
            rec_cmd = [sys.executable, str(HERE / "peers" / "drive_lorashare.py")]
        else:
            py, driver, extra = compare.TOOLS[m.tool]
            cmd = [str(py), str(driver), "compress", str(ckpt), *map(str, self.adapters), "-k", str(values["k"]),
                   *extra]
            rec_cmd = [str(py), str(driver)]
        print(f"[{m.name} {point['setting']}] compress (load {compare.load_average()})", file=sys.stderr)
        c = compare.run_limited(cmd, self.args.timeout, self.work / f"{slug}.compress.log")
        point["compress"] = {k: c[k] for k in ("ok", "timed_out", "returncode", "wall_s", "peak_rss_mb", "tail")}
        res = c["result"] or {}
        if res.get("unavailable"):
            m.status = (f"not available at commit {self.args.code.split()[0]}: from_adapters does not accept "
                        f"{', '.join(res['unavailable'])}")
            print(f"[{m.name}] {m.status}", file=sys.stderr)
            return None
        if res.get("rejected"):
            point["error"] = f"rejected by the library at commit {self.args.code.split()[0]}: {res['rejected']}"
            m.points.append(point)
            print(f"[{m.name} {point['setting']}] {point['error']}", file=sys.stderr)
            if len(m.points) == 1:
                m.status = point["error"]
            return point
        if not c["ok"]:
            what = (f"did not finish in {self.args.timeout:.0f} s" if c["timed_out"]
                    else f"failed (exit {c['returncode']}): {c['tail'].splitlines()[-1] if c['tail'] else ''}")
            point["error"] = what
            m.points.append(point)
            print(f"[{m.name} {point['setting']}] {what}", file=sys.stderr)
            if c["timed_out"] or len(m.points) == 1:
                m.status = f"stopped at {point['setting']}: {what}"
            return point
        point["compress_result"] = res
        point["bytes"] = compare.folder_bytes(ckpt)
        point["ratio"] = self.original_bytes / point["bytes"]
        rebuilt.mkdir(parents=True)
        r = compare.run_limited([*rec_cmd, "reconstruct", str(ckpt), str(rebuilt), *names,
                                 "--like", str(self.adapters[0])], self.args.timeout,
                                self.work / f"{slug}.reconstruct.log")
        point["reconstruct"] = {k: r[k] for k in ("ok", "timed_out", "returncode", "wall_s", "tail")}
        if not r["ok"]:
            point["error"] = "reconstruct " + ("timed out" if r["timed_out"] else f"failed (exit {r['returncode']})")
            m.points.append(point)
            return point
        scores = [compare.dw_error(a, rebuilt / a.name) for a in self.adapters]
        errs = [s["dw_error"] for s in scores]
        point.update(dw_errors=errs, mean_err=statistics.mean(errs), max_err=max(errs),
                     missing_modules=sum(s["missing_modules"] for s in scores))
        point["rebuilt"] = str(rebuilt)
        shutil.rmtree(ckpt, ignore_errors=True)
        if not self.keep_rebuilt:
            shutil.rmtree(rebuilt, ignore_errors=True)
        print(f"[{m.name} {point['setting']}] {point['bytes']} B ({point['ratio']:.2f}x) mean dW err "
              f"{point['mean_err']:.4f} max {point['max_err']:.4f}", file=sys.stderr)
        m.points.append(point)
        return point

    def sweep(self, m: Method, grid: dict[str, list]) -> None:
        names = list(grid)
        for combo in itertools.product(*(grid[n] for n in names)):
            if m.status:
                return
            self.run_point(m, dict(zip(names, combo)))

    def refine(self, m: Method, budgets: list[int]) -> None:
        """Bisect k so that each budget is bracketed by adjacent k (k-only sweeps)."""
        for ratio in budgets:
            budget = self.original_bytes / ratio
            for _ in range(3 if self.args.refine else 0):  # every k tried fits: double the largest k until one does not (or bytes stop growing)
                done = sorted((p["values"]["k"], p["bytes"]) for p in m.points if "bytes" in p)
                if m.status or not done or any(b > budget for _, b in done):
                    break
                if len(done) > 1 and done[-1][1] <= done[-2][1]:
                    break  # k is capped: a larger k writes no more bytes
                self.run_point(m, {"k": 2 * done[-1][0]})
            for _ in range(self.args.refine):
                if m.status:
                    return
                good = sorted(p["values"]["k"] for p in m.points if "bytes" in p and p["bytes"] <= budget)
                bad = sorted(p["values"]["k"] for p in m.points if "bytes" in p and p["bytes"] > budget)
                lo = good[-1] if good else 0
                above = [k for k in bad if k > lo]
                if not above:
                    break
                hi = above[0]
                if hi - lo <= 1:
                    break
                self.run_point(m, {"k": (lo + hi) // 2})


# ------------------------------------------------------------------------------- reference points


def _lora_modules(folder: Path):
    return compare._factors(folder)


def svd_energies(adapter: Path) -> tuple[list[tuple[float, int]], float, int]:
    """Per adapter: (sigma^2, elements per triplet) of every singular triplet of s B A over its modules,
    the total energy, and the bytes of its non-LoRA tensors (heads)."""
    import torch
    from safetensors.torch import load_file

    mods, s = _lora_modules(adapter)
    trip = []
    total = 0.0
    for f in mods.values():
        a, b = f["lora_A"].double(), f["lora_B"].double()
        _, rb = torch.linalg.qr(s * b)
        _, ra = torch.linalg.qr(a.T)
        sig = torch.linalg.svdvals(rb @ ra.T)
        cost = b.shape[0] + a.shape[1]
        for x in sig.tolist():
            trip.append((x * x, cost))
            total += x * x
    other = sum(t.numel() * t.element_size() for key, t in load_file(str(adapter / "adapter_model.safetensors")).items()
                if ".lora_A." not in key and ".lora_B." not in key)
    return trip, total, other


def svd_reference(energies: list, budget_total: float, n: int, elem: int) -> dict:
    """Per-adapter truncated SVD: each adapter gets budget/n bytes; errors per adapter (greedy by energy/byte)."""
    errs = []
    used = 0
    for trip, total, other in energies:
        room = budget_total / n - other
        kept = 0.0
        for e, cost in sorted(trip, key=lambda t: t[0] / t[1], reverse=True):
            if cost * elem <= room:
                room -= cost * elem
                kept += e
                used += cost * elem
        errs.append(math.sqrt(max(total - kept, 0.0) / total))
        used += other
    return {"mean_err": statistics.mean(errs), "max_err": max(errs), "bytes": used}


def oracle_reference(generation: dict, adapters: list[Path], store_elem: int) -> dict:
    """Synthetic sets: A and B of every adapter projected onto the generator's own subspaces."""
    import dataclasses

    import torch

    import synthetic

    shape = dataclasses.replace(synthetic.SHAPES[generation["shape"]], layers=generation["layers"],
                                hidden=generation["hidden"])
    spaces = synthetic.Subspaces(shape, generation["seed"], generation["subspace"])
    errs = []
    groups = set()
    for adapter in adapters:
        mods, s = compare._factors(adapter)
        err2 = norm2 = 0.0
        for module, f in mods.items():
            a, b = f["lora_A"].double(), f["lora_B"].double()
            ua, ub = spaces(module, "lora_A").double(), spaces(module, "lora_B").double()
            groups.add(module)
            a_h = (a @ ua) @ ua.T
            b_h = ub @ (ub.T @ b)
            _, r1 = torch.linalg.qr(torch.cat([s * b, -s * b_h], dim=1))
            _, r2 = torch.linalg.qr(torch.cat([a, a_h], dim=0).T)
            err2 += float((r1 @ r2.T).square().sum())
            _, r1 = torch.linalg.qr(s * b)
            _, r2 = torch.linalg.qr(a.T)
            norm2 += float((r1 @ r2.T).square().sum())
        errs.append(math.sqrt(err2 / norm2))
    sdim, d, r = generation["subspace"], generation["hidden"], shape.rank
    nbytes = len(groups) * 2 * (d * sdim + len(adapters) * sdim * r) * store_elem
    noise = generation["noise"]
    return {"mean_err": statistics.mean(errs), "max_err": max(errs), "bytes": nbytes,
            "estimate": math.sqrt(1 - (1 - noise) ** 2), "noise": noise, "subspace": sdim}


# ---------------------------------------------------------------------------------------- accuracy


def accuracy_of(folders: dict[str, Path] | None, floor: bool = False) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "examples"))
    from peft import PeftModel
    from tasks import TASKS, evaluate, load_base_model, load_floor_model, load_task, load_tokenizer

    tok = load_tokenizer()
    out = {}
    for task in TASKS:
        texts, labels, names = load_task(task, "test")
        if floor:
            model = load_floor_model(task)
        else:
            model = PeftModel.from_pretrained(load_base_model(len(names)), str(folders[task]))
        out[task] = evaluate(model, tok, texts, labels)
    return out


def gain_kept(acc: dict, original: dict, floor: dict) -> float:
    return statistics.mean((acc[t] - floor[t]) / (original[t] - floor[t]) for t in acc)


# ------------------------------------------------------------------------------------------ report


def best_within(m: Method, budget: float) -> dict | None:
    ok = [p for p in m.points if "bytes" in p and "mean_err" in p and p["bytes"] <= budget]
    return min(ok, key=lambda p: (p["mean_err"], p["bytes"])) if ok else None


def render(report: dict) -> str:
    v = report["variant"]
    lines = [f"## Quality at equal bytes: {report['scenario']}" + (f" (first {v['layers']} layers only)"
                                                                  if v.get("layers") else ""), ""]
    lines.append(
        f"Measured {report['started']} on {report['machine']}; lorashare at {report['lorashare_code']}. "
        f"Adapters: {report['adapters_folder']} ({report['n']} adapters, {report['original_bytes']:,} bytes). "
        f"Per-process limit {report['timeout']:.0f} s. Load average before: {report['load_before']}; after: "
        f"{report['load_after']}.")
    if v.get("layers"):
        lines.append(f"Only the first {v['layers']} layer(s) of every adapter (the same tensors as the full set): "
                     "lorashare 0.1.3 does not finish the full 32 layers within the limit.")
    lines.append("")
    for note in report["notes"]:
        lines.append(f"- {note}")
    if report["notes"]:
        lines.append("")
    acc = report.get("accuracy")
    for b in report["budgets"]:
        lines.append(f"### Budget original / {b['ratio']} = {b['budget']:,.0f} bytes")
        lines.append("")
        head = "| method | best setting within budget | checkpoint bytes | original / checkpoint | mean dW err | max dW err |"
        sep = "| --- | --- | ---: | ---: | ---: | ---: |"
        if acc:
            head += " mean accuracy | gain over floor kept |"
            sep += " ---: | ---: |"
        lines += [head, sep]
        for row in b["rows"]:
            p = row.get("point")
            if p:
                cells = (f"| {row['method']} | {p['setting']} | {p['bytes']:,} | {p['ratio']:.2f} | "
                         f"{p['mean_err']:.4f} | {p['max_err']:.4f} |")
                if acc:
                    a = p.get("accuracy")
                    cells += (f" {statistics.mean(a.values()):.3f} | {100 * p['gain_kept']:.1f}% |" if a
                              else f" {p.get('accuracy_error', '-')} | - |")
            else:
                cells = f"| {row['method']} | {row['why']} | - | - | - | - |" + (" - | - |" if acc else "")
            lines.append(cells)
        for ref in b["references"]:
            cells = (f"| *{ref['name']}* | reference | {ref['bytes']:,.0f} | {report['original_bytes'] / ref['bytes']:.2f} | "
                     f"{ref['mean_err']:.4f} | {ref['max_err']:.4f} |")
            if acc:
                cells += " - | - |"
            lines.append(cells)
        lines.append("")
    if acc:
        lines.append(f"Accuracy (whole test splits, {', '.join(acc['tasks'])}): original adapters "
                     f"{statistics.mean(acc['original'].values()):.3f} mean, head-only floor "
                     f"{statistics.mean(acc['floor'].values()):.3f} mean. Gain kept = mean over tasks of "
                     "(acc - floor) / (original - floor).")
        lines.append("")
    o = report.get("oracle")
    if o:
        lines.append(f"Noise floor of this synthetic set: each factor carries {o['noise']:.0%} of its energy as "
                     f"per-adapter noise, so a reconstruction of the shared signal alone has dW error about "
                     f"sqrt(1 - (1 - {o['noise']})^2) = {o['estimate']:.3f}. Measured: projecting every A and B onto "
                     f"the generator's own {o['subspace']}-dimensional subspaces gives mean {o['mean_err']:.4f}, max "
                     f"{o['max_err']:.4f}, and that representation would take {o['bytes']:,} bytes "
                     f"({report['original_bytes'] / o['bytes']:.1f}x) in the adapters' dtype. Below that error a "
                     "method is storing per-adapter noise as well.")
        lines.append("")
    lines.append("### Whole curves")
    lines.append("")
    lines.append("| method | setting | checkpoint bytes | original / checkpoint | mean dW err | max dW err | compress wall s |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for m in report["methods"]:
        if m["status"] and not m["points"]:
            lines.append(f"| {m['name']} | {m['status']} | - | - | - | - | - |")
            continue
        for p in sorted(m["points"], key=lambda p: p.get("bytes", float("inf"))):
            if "mean_err" in p:
                lines.append(f"| {m['name']} | {p['setting']} | {p['bytes']:,} | {p['ratio']:.2f} | {p['mean_err']:.4f} | "
                             f"{p['max_err']:.4f} | {p['compress']['wall_s']:.1f} |")
            else:
                lines.append(f"| {m['name']} | {p['setting']} | {p.get('error', '-')} | - | - | - | - |")
        if m["status"] and m["points"]:
            lines.append(f"| {m['name']} | sweep stopped: {m['status']} | - | - | - | - | - |")
    lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - optional
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in report["methods"]:
        pts = sorted((p["bytes"], p["mean_err"]) for p in m["points"] if "mean_err" in p)
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=m["name"])
    ref = report.get("svd_curve")
    if ref:
        for name, pts in ref.items():
            ax.plot([p["bytes"] for p in pts], [p["mean_err"] for p in pts], ls="--", lw=1, label=name)
    o = report.get("oracle")
    if o:
        ax.plot([o["bytes"]], [o["mean_err"]], marker="*", ms=10, ls="", color="k", label="generator's subspaces")
    for b in report["budgets"]:
        ax.axvline(b["budget"], color="grey", lw=0.8, ls=":")
        ax.text(b["budget"], 1.0, f" /{b['ratio']}", color="grey", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("checkpoint bytes")
    ax.set_ylabel("mean dW relative error")
    title = f"{report['scenario']}" + (f" (first {report['variant']['layers']} layers)" if report["variant"].get("layers") else "")
    ax.set_title(f"{title}: dW error against bytes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- main


def snapshot(rev: str) -> str:
    """Extract share_core/share_hf/share_torch of `rev` into /tmp and make every lorashare process import them."""
    import subprocess
    import tarfile
    import io

    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True,
                          check=True).stdout.strip()
    dest = Path(f"/tmp/lorashare-bench/src-{full[:12]}")
    if not (dest / "share_torch" / "__init__.py").is_file():
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", full, "share_core", "share_hf", "share_torch"],
                              capture_output=True, check=True).stdout
        tmp = dest.with_name(f"{dest.name}.part{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another run extracted the same commit meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    # the drivers run with their own folder as sys.path[0], so PYTHONPATH comes before the editable install
    compare.EXTRA_ENV["PYTHONPATH"] = str(dest) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return full[:7] + f" (share_* extracted from git into {dest})"


def parse_list(text: str) -> list:
    out = []
    for x in text.split(","):
        x = x.strip()
        if not x:
            continue
        try:
            out.append(int(x))
        except ValueError:
            out.append(float(x))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_compress-lorashare":
        return compress_lorashare(argv[1], json.loads(argv[2]), argv[3:])

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    p.add_argument("--lorashare", action="append", default=[], metavar="JSON",
                   help='option set: {"name": ..., <from_adapters kwargs>}; "{k}", "{ratio}", "{err}" are swept '
                        "(repeatable; default: num_components={k} at dtype float32 and bfloat16)")
    p.add_argument("--no-default-sets", action="store_true",
                   help="with --lorashare: do not also run the two default option sets")
    p.add_argument("--ks", default=None, help="values of {k} for lorashare (comma-separated)")
    p.add_argument("--peer-ks", default=None, help="values of -k for the peers")
    p.add_argument("--ratios", default="", help="extra values of {ratio} besides the budget ratios")
    p.add_argument("--max-errors", default="0.05,0.1,0.2,0.3,0.4,0.5", help="values of {err}")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                   help="values of another {NAME} placeholder")
    p.add_argument("--peers", default=None, help="comma-separated peers ('' for none); default per scenario")
    p.add_argument("--refine", type=int, default=4, help="bisection steps on k per budget and method")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit of each process, seconds")
    p.add_argument("--layers", type=int, default=None, help="synthetic sets: keep the first LAYERS layers")
    p.add_argument("--budgets", default=None, help="budget divisors R (budget = original bytes / R)")
    p.add_argument("--no-accuracy", action="store_true", help="real: skip the accuracy evaluation")
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--at", default="HEAD",
                   help="run lorashare from this commit's share_* packages (git archive into /tmp, put first on "
                        "PYTHONPATH of every lorashare process), so that edits landing in the working tree during "
                        "the run do not change what is measured; 'worktree' imports the working tree as it is")
    args = p.parse_args(argv)

    sc = SCENARIOS[args.scenario]
    if args.at == "worktree":
        args.code = compare.code_version()
    else:
        args.code = snapshot(args.at)
    budgets = parse_list(args.budgets) if args.budgets else sc["budgets"]
    ks = parse_list(args.ks) if args.ks else sc["ks"]
    peer_ks = parse_list(args.peer_ks) if args.peer_ks else sc["peer_ks"]
    peers = [t for t in (sc["peers"] if args.peers is None else args.peers).split(",") if t]
    for t in peers:
        if t not in compare.TOOLS or t == "lorashare":
            p.error(f"unknown peer {t!r}")
    if peers and not compare.PEER_PY.exists():
        p.error("benchmarks/peers/.venv is missing: run `bash benchmarks/peers/setup.sh` first")

    layers = args.layers if args.layers is not None else sc.get("layers")
    variant = f"-{layers}layers" if layers else ""
    generation = None
    if sc["kind"] == "synthetic":
        data = Path(f"/tmp/lorashare-bench/{args.scenario}{variant}")
        generation = compare.ensure_adapters({"shape": sc["shape"], "n": sc["n"]}, data, layers, None)
        adapters = compare.adapter_folders(data)
    else:
        sys.path.insert(0, str(ROOT / "examples"))
        from tasks import ADAPTERS_DIR, TASKS
        data = ADAPTERS_DIR
        adapters = [ADAPTERS_DIR / t for t in TASKS]
    work = Path(f"/tmp/lorashare-bench/quality-{args.scenario}{variant}" + (f"-{args.tag}" if args.tag else ""))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    original_bytes = sum(compare.folder_bytes(a) for a in adapters)

    option_sets = [json.loads(s) for s in args.lorashare]
    if not option_sets or not args.no_default_sets:
        option_sets = DEFAULT_OPTION_SETS + option_sets
    sweeps = {"k": ks, "ratio": sorted(set(budgets + parse_list(args.ratios))), "err": parse_list(args.max_errors)}
    for s in args.sweep:
        name, _, vals = s.partition("=")
        sweeps[name] = parse_list(vals)

    report = {"scenario": args.scenario, "variant": {"layers": layers}, "n": len(adapters),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{os.cpu_count()} CPU cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
              "lorashare_code": args.code, "adapters_folder": str(data), "generation": generation,
              "original_bytes": original_bytes, "timeout": args.timeout, "load_before": compare.load_average(),
              "argv": argv, "notes": [], "methods": [], "budgets": []}

    runner = Runner(args, adapters, work, original_bytes, keep_rebuilt=sc["kind"] == "real")
    methods: list[Method] = []
    t0 = time.perf_counter()
    for opts in option_sets:
        opts = dict(opts)
        name = opts.pop("name", None) or "lorashare " + json.dumps(opts)
        m = Method(name, "lorashare", options=opts)
        methods.append(m)
        holes = placeholders(opts)
        unknown = [h for h in holes if h not in sweeps]
        if unknown:
            m.status = f"no values for placeholder(s) {unknown}: pass --sweep NAME=V1,V2"
            continue
        runner.sweep(m, {h: sweeps[h] for h in holes})
        if holes == ["k"]:
            runner.refine(m, budgets)
    for tool in peers:
        m = Method(tool, "peer", tool=tool)
        methods.append(m)
        runner.sweep(m, {"k": peer_ks})
        runner.refine(m, budgets)
    report["sweep_seconds"] = time.perf_counter() - t0

    # references
    energies = [svd_energies(a) for a in adapters]
    lora_dtype_elem = 2 if generation and generation["shape"] == "llama-7b" else 4
    svd_curve = {}
    for label, elem in (("per-adapter SVD, float32", 4), ("per-adapter SVD, bfloat16 (rounding not counted)", 2)):
        svd_curve[label] = [dict(svd_reference(energies, original_bytes / r, len(adapters), elem), ratio=r)
                            for r in (1.5, 2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 100)]
    report["svd_curve"] = svd_curve
    if generation:
        report["oracle"] = oracle_reference(generation, adapters, lora_dtype_elem)

    for ratio in budgets:
        budget = original_bytes / ratio
        rows = []
        for m in methods:
            best = best_within(m, budget)
            if best:
                rows.append({"method": m.name, "point": best})
            else:
                why = m.status or ("no setting tried fits: smallest "
                                   + (f"{min(p['bytes'] for p in m.points if 'bytes' in p):,} bytes"
                                      if any("bytes" in p for p in m.points) else "none finished"))
                rows.append({"method": m.name, "why": why})
        refs = []
        for label, elem in (("per-adapter SVD, float32", 4), ("per-adapter SVD, bfloat16 (rounding not counted)", 2)):
            refs.append(dict(svd_reference(energies, budget, len(adapters), elem), name=label))
        report["budgets"].append({"ratio": ratio, "budget": budget, "rows": rows, "references": refs})

    if sc["kind"] == "real" and not args.no_accuracy:
        sys.path.insert(0, str(ROOT / "examples"))
        from tasks import TASKS
        import warnings

        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore")
        print("accuracy: original adapters and head-only floors", file=sys.stderr)
        original = accuracy_of({t: a for t, a in zip(TASKS, adapters)})
        floor = accuracy_of(None, floor=True)
        report["accuracy"] = {"tasks": TASKS, "original": original, "floor": floor}
        done = {}
        for b in report["budgets"]:
            for row in b["rows"]:
                pt = row.get("point")
                if not pt or pt["slug"] in done:
                    continue
                print(f"accuracy: {row['method']} {pt['setting']}", file=sys.stderr)
                try:
                    acc = accuracy_of({t: Path(pt["rebuilt"]) / t for t in TASKS})
                    pt["accuracy"] = acc
                    pt["gain_kept"] = gain_kept(acc, original, floor)
                except Exception as exc:  # noqa: BLE001 - e.g. PEFT refusing a folder without its head
                    pt["accuracy_error"] = f"cannot load: {type(exc).__name__}"
                    pt["accuracy_exception"] = f"{type(exc).__name__}: {exc}"[:500]
                done[pt["slug"]] = True

    for m in methods:
        if m.status and not m.points:
            report["notes"].append(f"{m.name}: {m.status}")
        report["methods"].append({"name": m.name, "kind": m.kind, "options": m.options, "tool": m.tool,
                                  "status": m.status, "points": m.points})
    report["load_after"] = compare.load_average()

    text = render(report)
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"quality-{args.scenario}{variant}" + (f"-{args.tag}" if args.tag else "")
    (results / f"{stem}.md").write_text(text + "\n")
    (results / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if plot(report, results / f"{stem}.png"):
        print(f"plot: {results / f'{stem}.png'}", file=sys.stderr)
    if sc["kind"] == "real":
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
