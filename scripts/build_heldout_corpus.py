#!/usr/bin/env python3
"""Build the held-out-domain corpus (lory_lightning/sample_data/heldout/) that no model here trains on.

    python scripts/build_heldout_corpus.py --workdir /tmp/lory-heldout

Two English domains the shipped corpus (books, wiki, legal, code, techdocs) lacks, from Debian
packages reachable here (apt-get download + dpkg-deb -x; nothing is installed):

- quotes: fortune-mod's English collections (`fortunes`): aphorisms, jokes, quotations and short
  verse; informal, conversational English, in short pieces with attributions.
- dictionary: WordNet 3.0's glosses (`wordnet-base`): "word, synonym (part of speech): definition;
  "example"" entries; terse, definitional English of a register no training domain has.

Both are far from the five training domains in register and form, which is the point: perplexity
on them measures how a model does on text it never saw the like of. Passages (at most 2,000
characters of consecutive fortunes or dictionary entries) are picked by a hash of their source id up
to a fixed budget, so the same packages give byte-identical files (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_sample_corpus import digest, write_jsonl_gz  # noqa: E402  (the same hash and writer)

APT_SOURCES = ["fortunes=1:1.99.1-7.3", "wordnet-base=1:3.0-37"]
BUDGET_CHARS = 300_000  # per domain: about 75k tokens of the sample tokenizer, under a minute to score
PASSAGE_CHARS = 2_000
LICENSES = {"quotes": "BSD-4-Clause-UC (fortune-mod; the quotations' authors as attributed)",
            "dictionary": "WordNet 3.0 license (Princeton University)"}
# fortune-mod's collections of general English; left out: computing and Linux/Debian/Perl in-jokes
# (close to the code and techdocs domains), ASCII art, IRC logs, Zippy's non sequiturs, the
# translation exercises and the `ethnic` collection.
FORTUNE_FILES = ["art", "cookie", "definitions", "drugs", "education", "food", "humorists", "kids", "law",
                 "love", "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people",
                 "pets", "platitudes", "politics", "pratchett", "science", "songs-poems", "sports", "wisdom",
                 "work"]
WORDNET_POS = {"noun": "n.", "verb": "v.", "adj": "adj.", "adv": "adv."}


def fetch(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "x"
    if not (workdir / ".fetched").exists():
        subprocess.run(["apt-get", "download", "-q", *APT_SOURCES], cwd=workdir, check=True)
        for deb in sorted(workdir.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        (workdir / ".fetched").touch()
    return root


def chunks(items: list[str], sep: str) -> Iterator[str]:
    """Consecutive items joined by ``sep`` into passages of at most PASSAGE_CHARS (a longer item alone)."""
    current: list[str] = []
    for item in items:
        if current and len(sep.join([*current, item])) > PASSAGE_CHARS:
            yield sep.join(current)
            current = []
        current.append(item)
    if current:
        yield sep.join(current)


def quotes(root: Path) -> Iterator[tuple[str, str]]:
    for name in FORTUNE_FILES:
        text = (root / "usr/share/games/fortunes" / name).read_text("utf-8", errors="replace")
        pieces = [p.strip("\n") for p in re.split(r"^%$", text, flags=re.M) if p.strip()]
        for i, passage in enumerate(chunks(pieces, "\n\n")):
            yield f"fortunes/{name}#{i}", passage


def wordnet_entry(line: str, pos: str) -> str | None:
    """One synset line of WordNet's data.<pos> -> "word, synonym (pos): gloss" (None: a licence line)."""
    if line.startswith("  "):  # the licence header
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)
    words = [fields[4 + 2 * i] for i in range(count)]
    words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in words]  # adjective markers like (a)
    return f"{', '.join(dict.fromkeys(words))} ({WORDNET_POS[pos]}): {gloss.strip()}"


def dictionary(root: Path) -> Iterator[tuple[str, str]]:
    for pos in WORDNET_POS:
        lines = (root / "usr/share/wordnet" / f"data.{pos}").read_text("utf-8").splitlines()
        entries = [e for e in (wordnet_entry(line, pos) for line in lines) if e]
        for i, passage in enumerate(chunks(entries, "\n")):
            yield f"wordnet/data.{pos}#{i}", passage


DOMAINS = {"quotes": quotes, "dictionary": dictionary}


def build_domain(name: str, root: Path) -> list[dict]:
    records = [{"text": text, "domain": name, "source": source, "license": LICENSES[name]}
               for source, text in DOMAINS[name](root)]
    picked, size = [], 0
    for r in sorted(records, key=lambda r: digest(r["source"])):
        if size >= BUDGET_CHARS:
            break
        picked.append(r)
        size += len(r["text"])
    order = {r["source"]: i for i, r in enumerate(records)}  # reading order inside the file
    return sorted(picked, key=lambda r: order[r["source"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lory-heldout"))
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "lory_lightning/sample_data/heldout")
    args = parser.parse_args()
    root = fetch(args.workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in DOMAINS:
        records = build_domain(name, root)
        write_jsonl_gz(args.out / f"{name}.jsonl.gz", records)
        print(f"{name:10s} {len(records):4d} passages {sum(len(r['text']) for r in records):8,d} chars")


if __name__ == "__main__":
    main()
