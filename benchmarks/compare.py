"""lorashare side by side with lorashare==0.1.3 and vlora-dev==1.0.0 on synthetic PEFT adapter sets.

    .venv/bin/python benchmarks/compare.py --scenario roberta-6
    .venv/bin/python benchmarks/compare.py --scenario llama-8 --peers lorashare-0.1.3,vlora-dev --timeout 600
    .venv/bin/python benchmarks/compare.py --scenario llama-1000          # lorashare --layer-by-layer only

Needs ``bash benchmarks/peers/setup.sh`` once for the peers' separate environment. Adapter sets are generated
by ``benchmarks/synthetic.py`` into ``--data`` (default /tmp/lorashare-bench/<scenario>) when missing.

Per scenario and tool, each step runs as its own process (the drivers in benchmarks/peers/), under a
wall-clock limit:

1. ``compress``: build + save the checkpoint. Reported: the seconds of build + save measured inside the
   process after its imports (``compress s``), the wall time of the whole process (imports included), its
   peak RSS (``ru_maxrss`` from ``os.wait4``, so the whole process), the bytes of every file it wrote.
2. ``reconstruct``: every adapter back to a PEFT folder with the tool's own reconstruct path.
3. dW error, computed here from the files alone, in float64: per adapter
   ``sqrt(sum_m ||s B A - s^ B^ A^||_F^2) / sqrt(sum_m ||s B A||_F^2)`` over its modules m, with ``s`` =
   lora_alpha / r of the original folder's adapter_config.json and ``s^`` that of the reconstructed folder's
   (what PEFT would apply), each norm from QR factors of the r-column stacks (no d x d matrix is formed).

Also measured: the read floor (``safe_open`` + ``get_tensor`` of every tensor of every adapter file; first a
read after evicting the files from the page cache with ``posix_fadvise(DONTNEED)``, then a warm read), the
compute floor (the bare top-k basis of every stacked (module, side) group, Gram or scatter matrix + eigh, on
factors already in memory: what no exact shared-basis method can skip), and the time to reconstruct one
adapter with lorashare. Results: a markdown table on stdout and
``benchmarks/results/<scenario>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
MAIN_PY = Path(sys.executable)
PEER_PY = PEERS / ".venv" / "bin" / "python"

SCENARIOS = {
    "roberta-6": {"shape": "roberta-base", "n": 6, "k": 32},
    "roberta-100": {"shape": "roberta-base", "n": 100, "k": 32},
    "llama-8": {"shape": "llama-7b", "n": 8, "k": 32},
    "llama-1000": {"shape": "llama-7b", "n": 1000, "k": 32, "memory_only": True},
}

TOOLS = {
    # name: (python, driver, extra compress args)
    "lorashare": (MAIN_PY, PEERS / "drive_lorashare.py", []),
    # this checkout again, its linear algebra on the GPU (CUDA context made before the clock starts)
    "lorashare-cuda": (MAIN_PY, PEERS / "drive_lorashare.py", ["--device", "cuda"]),
    "lorashare-0.1.3": (PEER_PY, PEERS / "drive_lorashare013.py", []),
    "vlora-dev": (PEER_PY, PEERS / "drive_vlora.py", []),
    "vlora-dev+f32": (PEER_PY, PEERS / "drive_vlora.py", ["--cast-float32"]),
}


def code_version() -> str:
    """The commit lorashare ran from, and whether its packages had uncommitted changes then."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "share_core", "share_hf",
                                "share_torch"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" with uncommitted changes in share_*" if dirty else "")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------- processes


#: Extra environment variables for every tool process (``--env``), e.g. OMP_WAIT_POLICY=PASSIVE.
EXTRA_ENV: dict[str, str] = {}


def run_limited(cmd: list[str], timeout: float, log: Path) -> dict:
    """Run `cmd` as its own process group; kill it after `timeout` s. Returns status, wall s, peak RSS, JSON."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env={**os.environ, **EXTRA_ENV})
        deadline = t0 + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    result = None
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
    return {"ok": proc.returncode == 0 and not timed_out and result is not None, "timed_out": timed_out,
            "returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "result": result, "tail": "\n".join(text.splitlines()[-6:])}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def adapter_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "adapter_config.json").is_file())


# -------------------------------------------------------------------------------- measurements


def read_floor(adapters: list[Path]) -> dict:
    """Seconds to read every tensor of every adapter file: after evicting them from the page cache, then warm."""
    from safetensors import safe_open

    files = [a / "adapter_model.safetensors" for a in adapters]

    def evict() -> None:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def read() -> float:
        t0 = time.perf_counter()
        total = 0
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    total += fh.get_tensor(key).numel()
        return time.perf_counter() - t0

    evict()
    cold = read()
    warm = [read() for _ in range(3)]
    return {"first_read_after_evict_s": cold, "warm_read_best_s": min(warm), "warm_reads_s": warm,
            "bytes": sum(f.stat().st_size for f in files)}


def compute_floor(adapters: list[Path], k: int, repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds of the least exact work any shared-basis method does once the factors are in memory: per
    (module, side), stack every adapter's columns (B, or A^T) and find the top-k left singular vectors, through
    the (n, n) Gram matrix when there are fewer stacked columns n than rows d, else the (d, d) scatter, then
    eigh (of the scatter on the CPU: every eigenvalue and only the k leading vectors, `eigh_leading`, the
    cheapest exact route lorashare knows) and one product. No balancing, refinement, loadings, errors or writing. Timed in float64 (lorashare's
    precision for the squared matrices) and in float32 (the cheapest, less exact), best of `repeats`, in this
    process with torch's default threads; reading the files is not timed. On a GPU (`device`), the stacks are
    moved there before the clock starts and the clock stops after the device is synchronized."""
    import torch
    from safetensors import safe_open

    from share_core._linalg import eigh_leading

    groups: dict[str, list] = {}
    for folder in adapters:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
            for key in fh.keys():
                side = "lora_A" if ".lora_A." in key else "lora_B" if ".lora_B." in key else None
                if side is None:
                    continue
                t = fh.get_tensor(key).to(torch.float32)
                groups.setdefault(key.replace(f".{side}.", ".") + "|" + side, []).append(
                    t.mT if side == "lora_A" else t)
    stacks = [torch.cat(cols, dim=1).to(device) for cols in groups.values()]
    del groups

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize(device)

    def once(dtype: torch.dtype) -> float:
        sync()
        t0 = time.perf_counter()
        for x in stacks:
            x = x.to(dtype)
            d, n = x.shape
            if n < d:
                w, p = torch.linalg.eigh(x.mT @ x)
                u = x @ p[:, -k:]  # (columns then normalized by the singular values: O(d k), left out)
            elif device == "cpu":  # every eigenvalue, only the k leading vectors (LAPACK's restricted route)
                w, u = eigh_leading(x @ x.mT, k)
            else:
                w, u = torch.linalg.eigh(x @ x.mT)
                u = u[:, -k:]
        sync()
        return time.perf_counter() - t0

    out = {"groups": len(stacks), "stack_shapes": sorted({tuple(x.shape) for x in stacks}), "k": k,
           "threads": torch.get_num_threads(), "device": device}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        once(dtype)  # warm-up: solver workspaces, and on a GPU its kernels and handles
        runs = [once(dtype) for _ in range(repeats)]
        out[f"{name}_best_s"], out[f"{name}_runs_s"] = min(runs), runs
    return out


def _factors(folder: Path) -> tuple[dict, float]:
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    scale = float(config["lora_alpha"]) / float(config["r"])
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    mods = {}
    for key, t in tensors.items():
        for side in ("lora_A", "lora_B"):
            suffix = f".{side}.weight"
            if key.endswith(suffix):
                mods.setdefault(key[: -len(suffix)], {})[side] = t
    return mods, scale


def dw_error(original: Path, rebuilt: Path) -> dict:
    """Pooled relative dW error of one adapter, from its original and reconstructed PEFT folders (float64)."""
    import torch

    orig, s = _factors(original)
    hat, s_hat = _factors(rebuilt)
    err2 = norm2 = 0.0
    missing = 0
    for module, f in orig.items():
        a, b = f["lora_A"].double(), f["lora_B"].double()
        if module in hat:
            a_h, b_h = hat[module]["lora_A"].double(), hat[module]["lora_B"].double()
        else:  # a module the tool dropped counts as reconstructed to zero
            missing += 1
            a_h, b_h = torch.zeros_like(a), torch.zeros_like(b)
        # ||[s B, -s^ B^] @ [A; A^]||_F = ||R_left @ R_right^T||_F with thin QRs of the two stacks
        _, r1 = torch.linalg.qr(torch.cat([s * b, -s_hat * b_h], dim=1))
        _, r2 = torch.linalg.qr(torch.cat([a, a_h], dim=0).T)
        err2 += float((r1 @ r2.T).square().sum())
        _, r1 = torch.linalg.qr(s * b)
        _, r2 = torch.linalg.qr(a.T)
        norm2 += float((r1 @ r2.T).square().sum())
    return {"dw_error": (err2 ** 0.5) / (norm2 ** 0.5), "missing_modules": missing, "scale": s, "scale_hat": s_hat}


def time_reconstruct_one(checkpoint: Path, name: str, repeats: int = 5) -> dict:
    """lorashare: from_pretrained(ckpt, adapters=[name]) + reconstruct(name), in memory and to a folder."""
    from share_torch import SHAREModel

    SHAREModel.from_pretrained(checkpoint, adapters=[name]).reconstruct(name)  # first call: lazy imports
    out: dict[str, list[float]] = {"load_s": [], "reconstruct_s": [], "total_in_memory_s": [],
                                   "total_to_folder_s": []}
    with tempfile.TemporaryDirectory(prefix="lorashare-recon-") as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            model = SHAREModel.from_pretrained(checkpoint, adapters=[name])
            t1 = time.perf_counter()
            model.reconstruct(name)
            t2 = time.perf_counter()
            out["load_s"].append(t1 - t0)
            out["reconstruct_s"].append(t2 - t1)
            out["total_in_memory_s"].append(t2 - t0)
        for i in range(repeats):
            t0 = time.perf_counter()
            SHAREModel.from_pretrained(checkpoint, adapters=[name]).reconstruct(name, output_dir=f"{tmp}/{i}")
            out["total_to_folder_s"].append(time.perf_counter() - t0)
    return {key: {"best": min(v), "median": statistics.median(v), "all": v} for key, v in out.items()}


# -------------------------------------------------------------------------------------- report


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def table(rows: list[dict], original_bytes: int) -> str:
    base = next((r for r in rows if r["tool"] == "lorashare" and r["compress"]["ok"]), None)
    base_s = base["compress_s"] if base else None
    lines = ["| tool | compress s | vs lorashare | process wall s | peak RSS MB | checkpoint bytes | "
             "original / checkpoint | mean dW err | max dW err | reconstruct-all s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c = r["compress"]
        if c["ok"]:
            t = fmt_s(r["compress_s"])
            ratio = f"{r['compress_s'] / base_s:.1f}x" if base_s else "-"
        elif c["timed_out"]:
            t = f"did not finish in {r['timeout']:.0f} s"
            ratio = f"> {r['timeout'] / base_s:.0f}x" if base_s else "-"
        else:
            t = f"failed (exit {c['returncode']})"
            ratio = "-"
        ck = r.get("checkpoint_bytes")
        err = r.get("dw_errors")
        rec = r.get("reconstruct")
        lines.append(
            f"| {r['tool']} | {t} | {ratio} | {fmt_s(c['wall_s'])} | {c['peak_rss_mb']:.0f} | "
            f"{ck if ck is not None else '-'} | {f'{original_bytes / ck:.2f}' if ck else '-'} | "
            f"{f'{statistics.mean(err):.4f}' if err else '-'} | {f'{max(err):.4f}' if err else '-'} | "
            f"{fmt_s(rec['result']['seconds']['reconstruct']) if rec and rec['ok'] else '-'} |")
    return "\n".join(lines)


def render(report: dict) -> str:
    sc = report["scenario"]
    v = report.get("variant") or {}
    what = "".join([f", first {v['layers']} layers only" if v.get("layers") else "",
                    f", hidden size {v['hidden']} (proxy)" if v.get("hidden") else ""])
    out = [f"## {report['name']}: {sc['shape']} shape{what}, N={sc['n']}, k={sc['k']}",
           "",
           f"Measured {report['started']} on {report['machine']}. Adapters: {report['adapters_folder']} "
           f"({report['original_bytes']} bytes in {sc['n']} folders; generated in "
           f"{report['generation'].get('seconds', float('nan')):.1f} s by benchmarks/synthetic.py). "
           f"Load average (1, 5, 15 min) before the run: {report['load_before']}; after: {report['load_after']}."
           + (f" lorashare at {report['lorashare_code']}." if report.get("lorashare_code") else "")
           + (f" Tool processes ran with {' '.join(f'{k}={v}' for k, v in report['env'].items())}." if report.get("env") else ""),
           ""]
    if report.get("rows"):
        out += [table(report["rows"], report["original_bytes"]), ""]
        for r in report["rows"]:
            c = r["compress"]
            extra = f"; k meaning: {c['result'].get('k_meaning')}" if c["ok"] and c["result"].get("k_meaning") else ""
            if c["ok"]:
                sec = c["result"]["seconds"]
                gpu = (f"; on {c['result']['gpu_name']}: CUDA context {fmt_s(sec['cuda_init'])} s before the clock, "
                       f"peak GPU memory allocated {c['result']['gpu_peak_allocated_mb']:.0f} MB"
                       if c["result"].get("gpu_name") else "")
                out.append(f"- {r['tool']}: build {fmt_s(sec['build'])} s + save {fmt_s(sec['save'])} s; RSS after "
                           f"imports {c['result']['rss_after_imports_mb']:.0f} MB{gpu}{extra}.")
            else:
                out.append(f"- {r['tool']}: {'timed out' if c['timed_out'] else 'failed'}; last output: "
                           f"`{c['tail'].splitlines()[-1] if c['tail'] else ''}`")
        out.append("")
    fl = report.get("floor")
    if fl:
        out.append(f"Read floor ({fl['bytes']} bytes of adapter_model.safetensors, safe_open + get_tensor of every "
                   f"tensor): first read after evicting the files from the page cache {fmt_s(fl['first_read_after_evict_s'])} s; "
                   f"warm read {fmt_s(fl['warm_read_best_s'])} s (best of 3).")
        base = next((r for r in report.get("rows", []) if r["tool"] == "lorashare" and r["compress"]["ok"]), None)
        if base:
            out.append(f"lorashare compress / warm read = {base['compress_s'] / fl['warm_read_best_s']:.2f}; "
                       f"/ first read = {base['compress_s'] / fl['first_read_after_evict_s']:.2f}.")
        out.append("")
    for cf, tool in ((report.get("compute_floor"), "lorashare"), (report.get("compute_floor_cuda"), "lorashare-cuda")):
        if not cf:
            continue
        shapes = ", ".join(f"{d} x {n}" for d, n in cf["stack_shapes"])
        where = (f"on the GPU ({cf['device']})" if cf.get("device", "cpu") != "cpu" else f"{cf['threads']} threads")
        out.append(f"Compute floor (the top-{cf['k']} basis of each of the {cf['groups']} stacked (module, side) "
                   f"groups, {shapes}, through its Gram or scatter matrix and eigh (of a scatter on the CPU: only the "
                   f"k leading vectors), nothing else; factors already "
                   f"in memory, {where}, best of {len(cf['float64_runs_s'])} after a warm-up): float64 "
                   f"{fmt_s(cf['float64_best_s'])} s, float32 {fmt_s(cf['float32_best_s'])} s."
                   + (f" As multiples of the warm read: {cf['float64_best_s'] / fl['warm_read_best_s']:.2f} and "
                      f"{cf['float32_best_s'] / fl['warm_read_best_s']:.2f}; of the first read after eviction: "
                      f"{cf['float64_best_s'] / fl['first_read_after_evict_s']:.2f} and "
                      f"{cf['float32_best_s'] / fl['first_read_after_evict_s']:.2f} (a tool within 2x of that read "
                      f"needs a ratio below 2 here before any other work)." if fl else ""))
        base = next((r for r in report.get("rows", []) if r["tool"] == tool and r["compress"]["ok"]), None)
        if base:
            out.append(f"{tool} compress / float64 compute floor = {base['compress_s'] / cf['float64_best_s']:.2f}.")
            if fl and tool != "lorashare":  # (lorashare's own ratios are under the read floor above)
                out.append(f"{tool} compress / first read = {base['compress_s'] / fl['first_read_after_evict_s']:.2f}; "
                           f"/ warm read = {base['compress_s'] / fl['warm_read_best_s']:.2f}.")
        out.append("")
    rt = report.get("reconstruct_one")
    if rt:
        out.append(f"Reconstructing one adapter with lorashare (`SHAREModel.from_pretrained(ckpt, adapters=[name])` "
                   f"then `.reconstruct(name)`, Python imports excluded, {len(rt['total_in_memory_s']['all'])} runs):")
        out.append("")
        out.append("| what is timed | best ms | median ms |")
        out.append("| --- | ---: | ---: |")
        for key, label in (("load_s", "from_pretrained only"), ("reconstruct_s", "reconstruct (in memory) only"),
                           ("total_in_memory_s", "from_pretrained + reconstruct, in memory"),
                           ("total_to_folder_s", "from_pretrained + reconstruct(output_dir=) (PEFT folder written)")):
            out.append(f"| {label} | {rt[key]['best'] * 1e3:.1f} | {rt[key]['median'] * 1e3:.1f} |")
        out.append("")
    if report.get("memory_only"):
        out.append(report["memory_only"])
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- main


def ensure_adapters(scenario: dict, folder: Path, layers: int | None, hidden: int | None, workers: int = 1) -> dict:
    sys.path.insert(0, str(HERE))
    import synthetic

    shape = synthetic.SHAPES[scenario["shape"]]
    want = {"n": scenario["n"], "shape": scenario["shape"], "layers": layers or shape.layers,
            "hidden": hidden or shape.hidden}
    info = folder / "generated.json"
    if info.is_file():
        g = json.loads(info.read_text())
        if all(g.get(k, getattr(shape, k, None)) == v for k, v in want.items()):
            return g
        raise SystemExit(f"{folder} holds another adapter set ({g}); pass --data or remove it")
    print(f"generating {want} into {folder}", file=sys.stderr)
    return synthetic.generate(scenario["shape"], scenario["n"], folder, layers=layers, hidden=hidden, workers=workers)


def run_tool(tool: str, adapters: list[Path], work: Path, k: int, timeout: float, extra: list[str]) -> dict:
    py, driver, args = TOOLS[tool]
    ckpt = work / f"{tool}.ckpt"
    shutil.rmtree(ckpt, ignore_errors=True)
    row = {"tool": tool, "timeout": timeout}
    print(f"[{tool}] compress (limit {timeout:.0f} s, load {load_average()})", file=sys.stderr)
    c = run_limited([str(py), str(driver), "compress", str(ckpt), *map(str, adapters), "-k", str(k), *args, *extra],
                    timeout, work / f"{tool}.compress.log")
    row["compress"] = c
    if not c["ok"]:
        print(f"[{tool}] {'timed out' if c['timed_out'] else 'failed'}: {c['tail']}", file=sys.stderr)
        return row
    row["compress_s"] = c["result"]["seconds"]["build"] + c["result"]["seconds"]["save"]
    row["checkpoint_bytes"] = folder_bytes(ckpt)
    print(f"[{tool}] compress {row['compress_s']:.2f} s, peak RSS {c['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return row


def reconstruct_and_score(row: dict, adapters: list[Path], work: Path, timeout: float) -> None:
    tool = row["tool"]
    py, driver, _ = TOOLS[tool]
    out = work / f"{tool}.rebuilt"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = [a.name for a in adapters]
    print(f"[{tool}] reconstruct {len(names)} adapters", file=sys.stderr)
    r = run_limited([str(py), str(driver), "reconstruct", str(work / f"{tool}.ckpt"), str(out), *names,
                     "--like", str(adapters[0])], timeout, work / f"{tool}.reconstruct.log")
    row["reconstruct"] = r
    if not r["ok"]:
        print(f"[{tool}] reconstruct failed: {r['tail']}", file=sys.stderr)
        return
    scores = [dw_error(a, out / a.name) for a in adapters]
    row["dw_errors"] = [s["dw_error"] for s in scores]
    row["dw_detail"] = {"missing_modules": sum(s["missing_modules"] for s in scores),
                        "scales": sorted({(s["scale"], s["scale_hat"]) for s in scores})}
    from safetensors.torch import load_file

    row["rebuilt_dtypes"] = sorted({str(t.dtype).removeprefix("torch.") for t in
                                    load_file(str(out / adapters[0].name / "adapter_model.safetensors")).values()})
    shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    p.add_argument("--peers", default="lorashare-0.1.3,vlora-dev",
                   help="comma-separated peers (lorashare-0.1.3, vlora-dev, vlora-dev+f32, and lorashare-cuda: this "
                        "checkout on the GPU), '' for none")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit of each process, seconds")
    p.add_argument("--data", default=None, help="adapter set folder (default /tmp/lorashare-bench/<scenario>)")
    p.add_argument("--work", default=None, help="where checkpoints go (default /tmp/lorashare-bench/work-<scenario>)")
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--layer-by-layer", action="store_true", help="pass --layer-by-layer to lorashare")
    p.add_argument("--chunk-size", type=int, default=None, help="pass --chunk-size to lorashare")
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--no-cpu", action="store_true", help="leave out lorashare on the CPU (with --peers lorashare-cuda)")
    p.add_argument("--layers", type=int, default=None,
                   help="use a subset: the first LAYERS layers of every adapter (same tensors as the full set)")
    p.add_argument("--hidden", type=int, default=None,
                   help="use a proxy set with this hidden size (same modules, ranks and loadings count)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for every tool process (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--gen-workers", type=int, default=1, help="processes generating a missing adapter set")
    args = p.parse_args(argv)

    sc = SCENARIOS[args.scenario]
    EXTRA_ENV.update(kv.split("=", 1) for kv in args.env)
    variant = (f"-{args.layers}layers" if args.layers else "") + (f"-hidden{args.hidden}" if args.hidden else "")
    data = Path(args.data or f"/tmp/lorashare-bench/{args.scenario}{variant}")
    work = Path(args.work or f"/tmp/lorashare-bench/work-{args.scenario}{variant}")
    work.mkdir(parents=True, exist_ok=True)
    generation = ensure_adapters(sc, data, args.layers, args.hidden, args.gen_workers)
    adapters = adapter_folders(data)
    assert len(adapters) == sc["n"], (len(adapters), sc["n"])
    peers = [t for t in args.peers.split(",") if t]
    memory_only = sc.get("memory_only", False)
    if memory_only and any(t != "lorashare-cuda" for t in peers):
        print(f"{args.scenario}: memory-only scenario, peers are not run", file=sys.stderr)
        peers = [t for t in peers if t == "lorashare-cuda"]
    for t in peers:
        if t not in TOOLS:
            p.error(f"unknown peer {t!r}; choose from {', '.join(t for t in TOOLS if t != 'lorashare')}")
        if TOOLS[t][0] == PEER_PY and not PEER_PY.exists():
            p.error("benchmarks/peers/.venv is missing: run `bash benchmarks/peers/setup.sh` first")

    report = {"name": args.scenario + variant, "scenario": sc, "variant": {"layers": args.layers, "hidden": args.hidden}, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{os.cpu_count()} CPU cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
              "adapters_folder": str(data), "generation": generation, "load_before": load_average(),
              "env": dict(EXTRA_ENV), "lorashare_code": code_version(),
              "original_bytes": sum(folder_bytes(a) for a in adapters), "rows": []}

    if not args.no_floor and not memory_only:
        print(f"read floor (load {load_average()})", file=sys.stderr)
        report["floor"] = read_floor(adapters)
        print(f"read floor: {report['floor']}", file=sys.stderr)

    lorashare_extra = (["--layer-by-layer"] if args.layer_by_layer or memory_only else []) + (
        ["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])
    tools = ([] if args.no_cpu else ["lorashare"]) + peers
    if not tools:
        p.error("--no-cpu leaves no tool to run: add --peers lorashare-cuda")
    for tool in tools:
        ours = TOOLS[tool][1] == TOOLS["lorashare"][1]  # this checkout, on the CPU or the GPU
        row = run_tool(tool, adapters, work, sc["k"], args.timeout, lorashare_extra if ours else [])
        report["rows"].append(row)
        if row["compress"]["ok"] and not memory_only:
            reconstruct_and_score(row, adapters, work, args.timeout)

    # this checkout's first row that finished (on the CPU, or on the GPU with --no-cpu); never a peer's
    base = next((r for r in report["rows"] if TOOLS[r["tool"]][1] == TOOLS["lorashare"][1] and r["compress"]["ok"]),
                None)
    if base:  # every shape: at N = 1000 it shows that one adapter is read without the others
        report["reconstruct_one"] = time_reconstruct_one(work / f"{base['tool']}.ckpt", adapters[0].name)
    if not args.no_floor and not memory_only:
        # after the tools: its stacks (0.5 GB for llama-8) would raise this process's peak RSS, which Linux
        # hands on to every child through fork and exec as the start of its ru_maxrss
        report["compute_floor"] = compute_floor(adapters, sc["k"])
        print(f"compute floor: {report['compute_floor']}", file=sys.stderr)
        import torch

        if "lorashare-cuda" in peers and torch.cuda.is_available():
            report["compute_floor_cuda"] = compute_floor(adapters, sc["k"], device="cuda")
            print(f"compute floor on the GPU: {report['compute_floor_cuda']}", file=sys.stderr)
    report["load_after"] = load_average()

    text = render(report)
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = args.scenario + variant + (f"-{args.tag}" if args.tag else "")
    (results / f"{stem}.md").write_text(text + "\n")
    (results / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
