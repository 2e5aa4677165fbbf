"""The HTML report on a real checkpoint of real PEFT adapters: files, images, figures, escaping, atomic writes, CLI."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")  # the `report` extra; CI installs it through the `test` extra
from PIL import Image  # noqa: E402  (matplotlib depends on Pillow)

from share_core.errors import CheckpointExistsError, ShareError  # noqa: E402
from share_torch import SHAREModel  # noqa: E402
from share_torch import report as report_module  # noqa: E402
from share_torch.report import ReportDependencyError, write_report  # noqa: E402

from .conftest import save_adapter  # noqa: E402

LORASHARE = Path(sys.executable).parent / "lorashare"
PNGS = ["explained_variance.png", "dw_error_heatmap.png", "dw_error_adapters.png", "bytes.png"]
WEIRD = 'we<i>rd & "co" $x$'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[SHAREModel, Path]:
    """Three real BERT adapters (ranks 4, 4, 6), one with a name full of HTML and mathtext characters, k=3."""
    root = tmp_path_factory.mktemp("report")
    adapters = {
        "sst2": save_adapter(root / "sst2", seed=1, r=4, alpha=8),
        WEIRD: save_adapter(root / "weird", seed=2, r=4, alpha=16),
        "mrpc": save_adapter(root / "mrpc", seed=3, r=6, alpha=6),
    }
    share = SHAREModel.from_adapters(adapters, num_components=3)
    share.save_pretrained(root / "ckpt")
    return share, root / "ckpt"


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts (entities decoded), and every img src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def siblings(target: Path) -> list[str]:
    return [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def test_report_writes_page_and_valid_images(checkpoint, tmp_path):
    share, _ = checkpoint
    out = tmp_path / "report"
    index = write_report(share, out)
    assert index == out.absolute() / "index.html" and index.is_file()
    page = index.read_text(encoding="utf-8")
    found = parse(page)
    assert sorted(found.images) == sorted(PNGS)  # every plot referenced, by relative path
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.width >= 400 and image.height >= 200, (name, image.size)
    assert "<script" not in page and "http://" not in page and "https://" not in page and "@import" not in page
    assert json.loads((out / "lorashare_report.json").read_text()) == json.loads(json.dumps(share.stats()))
    assert siblings(out) == []


def test_headline_figures_equal_stats(checkpoint, tmp_path):
    share, _ = checkpoint
    stats = share.stats()
    text = html.unescape(write_report(share, tmp_path / "r").read_text(encoding="utf-8"))
    b = stats["bytes"]
    assert f"{stats['num_modules']} ({2 * stats['num_modules']} groups)" in text
    assert f"mean {stats['dw_error_mean']:.3e}, max {stats['dw_error_max']:.3e}" in text
    assert f"({b['original']:,}) -> checkpoint" in text and f"({b['checkpoint']:,}), {b['ratio']:.2f}x smaller" in text
    k = str(stats["k_min"]) if stats["k_min"] == stats["k_max"] else f"{stats['k_min']} to {stats['k_max']}"
    headline = dict(zip(*[iter(_definitions(text))] * 2))
    assert headline["adapters"] == "3" and headline["k per group"] == k
    assert stats["k_max"] == 3  # k=3 asked, below every group's stacked rank


def _definitions(text: str) -> list[str]:
    """The <dt>/<dd> texts of the headline list, in order."""
    return re.findall(r"<d[td]>(.*?)</d[td]>", text)


def test_per_adapter_rows_and_escaped_name(checkpoint, tmp_path):
    share, _ = checkpoint
    page = write_report(share, tmp_path / "r").read_text(encoding="utf-8")
    adapters_table = parse(page).tables[0]
    assert adapters_table[0][:3] == ["adapter", "LoRA rank r", "dW relative error"]
    rows = adapters_table[1:]
    assert [row[0] for row in rows] == ["sst2", WEIRD, "mrpc"]
    stats = share.stats()
    assert [row[2] for row in rows] == [f"{stats['dw_error'][n]:.3e}" for n in ["sst2", WEIRD, "mrpc"]]
    assert [row[1] for row in rows] == ["4", "4", "6"]
    assert WEIRD not in page and "<i>" not in page  # the raw name never reaches the markup
    assert html.escape(WEIRD, quote=True) in page


def test_options_and_leave_one_out_when_stats_carry_them(checkpoint, tmp_path, monkeypatch):
    share, _ = checkpoint
    original = SHAREModel.stats

    def stats(self):
        figures = original(self)
        figures["options"] = {**figures["options"], "future_option": "on <b>"}
        figures["leave_one_out"] = {"sst2": 0.25, WEIRD: 0.5, "mrpc": None}
        return figures

    monkeypatch.setattr(SHAREModel, "stats", stats)
    page = write_report(share, tmp_path / "r").read_text(encoding="utf-8")
    tables = parse(page).tables
    header, *rows = tables[0]
    assert header[-1] == "leave-one-out dW error (how well a new adapter like this would fit)"
    assert [row[-1] for row in rows] == ["2.500e-01", "5.000e-01", "n/a"]
    options = dict(row for row in tables[1][1:])
    assert options["future_option"] == "on <b>" and options["num_components"] == "3"
    assert options["center"] == "false"


def test_leave_one_out_estimate_of_a_real_build(checkpoint, tmp_path):
    adapters = {name: Path(source) for name, source in
                ((n, checkpoint[0]._meta(n)["source"]) for n in checkpoint[0].adapter_names)}
    share = SHAREModel.from_adapters(adapters, num_components=3, leave_one_out=True)
    stats = share.stats()
    assert set(stats["leave_one_out"]) == set(share.adapter_names)
    page = write_report(share, tmp_path / "r").read_text(encoding="utf-8")
    header, *rows = parse(page).tables[0]
    assert header[-1].startswith("leave-one-out dW error")
    assert [row[-1] for row in rows] == [f"{stats['leave_one_out'][n]:.3e}" for n in share.adapter_names]
    mean = sum(stats["leave_one_out"].values()) / len(stats["leave_one_out"])
    assert f"mean {mean:.3e} (how well a new adapter like these would fit)" in html.unescape(page)


def test_no_leave_one_out_column_without_the_figure(checkpoint, tmp_path):
    share, _ = checkpoint
    assert "leave_one_out" not in share.stats()  # built without leave_one_out=True
    page = write_report(share, tmp_path / "r").read_text(encoding="utf-8")
    assert "leave-one-out" not in parse(page).tables[0][0][-1]


def test_path_and_model_give_the_same_page(checkpoint, tmp_path):
    share, ckpt = checkpoint
    from_model = write_report(share, tmp_path / "a").read_text(encoding="utf-8")
    from_path = write_report(ckpt, tmp_path / "b").read_text(encoding="utf-8")
    assert from_path == from_model


def test_existing_output_refused_then_overwritten(checkpoint, tmp_path):
    share, ckpt = checkpoint
    out = tmp_path / "r"
    write_report(share, out)
    before = (out / "index.html").read_bytes()
    with pytest.raises(CheckpointExistsError, match="already exists.*overwrite"):
        write_report(share, out)
    assert (out / "index.html").read_bytes() == before
    (out / "stale.txt").write_text("from the old report")
    fewer = SHAREModel.from_pretrained(ckpt, adapters=["sst2", "mrpc"])
    write_report(fewer, out, overwrite=True)
    assert not (out / "stale.txt").exists()  # replaced as a whole, not merged
    assert [row[0] for row in parse((out / "index.html").read_text()).tables[0][1:]] == ["sst2", "mrpc"]
    assert siblings(out) == []


def test_foreign_folder_is_never_replaced(checkpoint, tmp_path):
    share, _ = checkpoint
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "index.html").write_text("my own page")
    with pytest.raises(CheckpointExistsError, match="does not look like a report"):
        write_report(share, foreign, overwrite=True)
    assert (foreign / "index.html").read_text() == "my own page"


def test_failure_midway_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    share, _ = checkpoint

    def broken(figure_class, data):
        raise RuntimeError("plot failed")

    monkeypatch.setitem(report_module._DRAW, "bytes", broken)  # the last plot: three are written by then
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(share, out)
    assert not out.exists() and siblings(out) == []


def test_missing_matplotlib_names_the_extra(checkpoint, tmp_path, monkeypatch):
    share, _ = checkpoint
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    with pytest.raises(ReportDependencyError, match=r'pip install "lorashare\[report\]"') as info:
        write_report(share, tmp_path / "r")
    assert isinstance(info.value, ShareError) and isinstance(info.value, ImportError)
    assert not (tmp_path / "r").exists()


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    env.pop("LORASHARE_DEBUG", None)
    return subprocess.run([str(LORASHARE), *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_report(checkpoint, tmp_path):
    _, ckpt = checkpoint
    out = tmp_path / "r"
    done = run("report", str(ckpt), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote report to {out / 'index.html'}"
    assert all((out / name).is_file() for name in PNGS)
    again = run("report", str(ckpt), "-o", str(out))
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip().startswith("lorashare: error:") and "--overwrite" in again.stderr
    assert run("report", str(ckpt), "-o", str(out), "--overwrite").returncode == 0
    assert run("report", str(ckpt)).returncode == 2  # no -o: usage error


def test_cli_missing_checkpoint_is_one_error_line(tmp_path):
    out = tmp_path / "r"
    done = run("report", str(tmp_path / "no_such_checkpoint"), "-o", str(out))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorashare: error:") and "no_such_checkpoint" in lines[0]
    assert not out.exists()
