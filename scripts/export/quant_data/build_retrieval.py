"""Builds retrieval.json, the small query -> passage set quantize.py ranks with (committed; rerun only
to change it). Text comes from CPython's own docstrings, so it is available offline and licensed
with Python: the summary line of a docstring becomes a query, the rest of that docstring its
positive passage; more docstring bodies and paragraphs of the language reference (pydoc_data) are
distractors. Everything is sorted and filtered without randomness, so one CPython version always
gives the same file (the committed one was built with CPython 3.11.7).

    python scripts/export/quant_data/build_retrieval.py [OUT.json]
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmath", "codecs",
    "collections", "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email.message", "enum", "fnmatch", "fractions", "ftplib",
    "functools", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "http.cookies", "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "mailbox", "math", "mimetypes", "operator", "optparse", "os", "os.path", "pathlib",
    "pickle", "pkgutil", "platform", "poplib", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap", "threading",
    "time", "timeit", "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.etree.ElementTree", "zipfile",
    "zlib", "zoneinfo",
]

MAX_QUERIES = 300
MAX_PASSAGES = 750
MAX_PASSAGE_CHARS = 1200
MIN_BODY_CHARS = 120


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head[: head.rfind(" ")] if " " in head else head


def docstrings() -> list[tuple[str, str]]:
    """(qualified name, docstring) of the public functions, classes and methods, sorted by name."""
    out: dict[str, str] = {}
    seen: set[int] = set()  # re-exported objects (os.path in os, asyncio's submodules) count once
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            doc = inspect.getdoc(obj)
            if doc:
                out.setdefault(f"{name}.{attr}", doc)
            if inspect.isclass(obj):
                for meth in sorted(vars(obj)):
                    if meth.startswith("_"):
                        continue
                    mdoc = inspect.getdoc(getattr(obj, meth, None))
                    if mdoc:
                        out.setdefault(f"{name}.{attr}.{meth}", mdoc)
    return sorted(out.items())


def split_summary(doc: str) -> tuple[str, str]:
    """First paragraph (the summary) and the rest of a docstring."""
    parts = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    return clean(parts[0]), clean(parts[1]) if len(parts) > 1 else ""


def main() -> int:
    warnings.simplefilter("ignore")  # deprecated aliases (typing.io) warn when their docstrings are read
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("retrieval.json")
    pairs: list[tuple[str, str, str]] = []
    seen_summary: dict[str, int] = {}
    seen_body: set[str] = set()
    docs = docstrings()
    for qname, doc in docs:
        summary, body = split_summary(doc)
        seen_summary[summary] = seen_summary.get(summary, 0) + 1
        # Signature lines ("f(x, y) -> z") and one-word summaries make poor queries.
        if not (25 <= len(summary) <= 160) or "(" in summary[:30] or len(body) < MIN_BODY_CHARS:
            continue
        body = cut(body, MAX_PASSAGE_CHARS)
        if body in seen_body:
            continue
        seen_body.add(body)
        pairs.append((qname, summary, body))
    # A summary shared by several objects ("Return self==value.") has no single right answer.
    pairs = [p for p in pairs if seen_summary[p[1]] == 1]
    step = max(1, len(pairs) // MAX_QUERIES)
    chosen = pairs[::step][:MAX_QUERIES]
    chosen_names = {p[0] for p in chosen}
    distractors = [p for p in pairs if p[0] not in chosen_names]

    import pydoc_data.topics as topics

    paragraphs = []
    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            text = clean(para)
            if 200 <= len(text) and not text.startswith(("*", "=", "-")):
                paragraphs.append(cut(text, MAX_PASSAGE_CHARS))
    passages = [p[2] for p in chosen]
    room = MAX_PASSAGES - len(passages)
    n_ref = min(len(paragraphs), room // 3)
    passages += paragraphs[:: max(1, len(paragraphs) // n_ref)][:n_ref]
    room = MAX_PASSAGES - len(passages)
    passages += [p[2] for p in distractors[:: max(1, len(distractors) // room)][:room]]

    data = {
        "description": "query -> passage set for quantize.py; built by build_retrieval.py from CPython "
        f"{sys.version.split()[0]} docstrings (summary line = query, rest = its passage) and "
        "pydoc_data language-reference paragraphs; calibration.json (same script) holds other texts "
        "of the same sources",
        "queries": [{"text": s, "positive": i, "source": q} for i, (q, s, _) in enumerate(chosen)],
        "passages": passages,
    }
    out_path.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    size = out_path.stat().st_size
    print(f"{len(chosen)} queries, {len(passages)} passages, {size / 1024:.0f} KB -> {out_path}")

    # Calibration texts (activation statistics for quantize.py), disjoint from everything above:
    # docstring bodies and one-line docstrings not used here, unused reference paragraphs.
    used = set(passages) | {q for _, q, _ in chosen}
    bodies, summaries = [], []
    for _, doc in docs:
        summary, body = split_summary(doc)
        body = cut(body, MAX_PASSAGE_CHARS)
        if len(body) >= 60 and body not in used:
            bodies.append(body)
        elif not body and 25 <= len(summary) <= 160 and summary not in used:
            summaries.append(summary)
    spare_paras = [p for p in paragraphs if p not in used]
    calib = bodies[:: max(1, len(bodies) // 150)][:150] + summaries[:: max(1, len(summaries) // 80)][:80]
    calib += spare_paras[:: max(1, len(spare_paras) // 50)][:50]
    calib_path = out_path.with_name("calibration.json")
    calib_path.write_text(json.dumps(calib, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"{len(calib)} calibration texts, {calib_path.stat().st_size / 1024:.0f} KB -> {calib_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
