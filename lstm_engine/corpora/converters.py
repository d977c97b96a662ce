"""How each corpus becomes plain text: the built-in corpora and the source converters.

The registry (corpora/registry.json) names a converter in each entry's "convert" object
and states its parameters and rule there; the functions below follow that object:

    builtin:   BUILTINS[kind](convert)               -> text
    download:  CONVERTERS[kind](convert, paths)      -> (text, report)

where `paths` are the verified source files in registry order and `report` is a short
human-readable summary (e.g. how many poems were kept and why others were dropped).
"""
from __future__ import annotations

import json
import os
import re
import sysconfig
from collections import Counter

from ..errors import UserError


# -- built-in corpora (offline, from the running Python) ---------------------------------------

def pydoc_topics(convert):
    """The documentation topics every CPython ships (pydoc_data.topics), in sorted key order."""
    import pydoc_data.topics as topics
    return "".join(topics.topics[k] for k in sorted(topics.topics))


def stdlib_files(root, exclude_dirs):
    """-> sorted relative POSIX paths of the .py files under root, skipping excluded folder names."""
    skip = set(exclude_dirs)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        rel = os.path.relpath(folder, root)
        for f in files:
            if f.endswith(".py"):
                found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(found)


def python_stdlib(convert, root=None):
    """The standard library's .py files in sorted path order, each after a header line, cut at a
    file boundary so the text stays within convert["max_chars"] characters."""
    root = root or sysconfig.get_paths()["stdlib"]
    header, cap = convert["header"], int(convert["max_chars"])
    pieces, total = [], 0
    for rel in stdlib_files(root, convert.get("exclude_dirs", ())):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                body = f.read()
        except (OSError, UnicodeDecodeError):
            continue                                   # unreadable or not UTF-8: not part of the corpus
        if not body.endswith("\n"):
            body += "\n"
        piece = header.format(path=rel) + body
        if total + len(piece) > cap:
            break
        pieces.append(piece)
        total += len(piece)
    if not pieces:
        raise UserError(f"no Python source found under {root}; use another corpus (e.g. --corpus python-docs)")
    return "".join(pieces)


BUILTINS = {"pydoc-topics": pydoc_topics, "python-stdlib": python_stdlib}


# -- converters of downloaded sources ------------------------------------------------------------

def plain_text(convert, paths):
    """UTF-8 text files, concatenated in registry order."""
    texts = []
    for p in paths:
        with open(p, "rb") as f:
            try:
                texts.append(f.read().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise UserError(f"source {p} is not valid UTF-8 (byte {e.start})") from None
    return "".join(texts), f"{len(paths)} text file(s) as they are"


ALLOWED = re.compile(r"[\u4e00-\u9fff，。]*")


def regular_verse_verdict(body):
    """None if `body` is a regular-verse poem (the tang-poems.txt rules), else why it is dropped.

    Kept: only CJK Unified Ideographs (U+4E00-U+9FFF), '，' and '。'; clauses alternate '，'/'。'
    strictly and the poem ends with '。'; exactly 4 or 8 clauses, all of 5 or all of 7 characters.
    """
    if not body or not ALLOWED.fullmatch(body):
        return "characters"
    parts = re.split(r"([，。])", body)           # clause, punct, clause, punct, ..., tail
    tail = parts.pop()
    if tail:
        return "fragment"                            # a trailing clause without punctuation
    clauses, puncts = parts[0::2], parts[1::2]
    expected = ["，", "。"] * (len(puncts) // 2 + 1)
    if any(not c for c in clauses) or puncts != expected[:len(puncts)] or puncts[-1] != "。":
        return "punctuation"
    lengths = {len(c) for c in clauses}
    if len(clauses) not in (4, 8) or lengths not in ({5}, {7}):
        return "form"
    return None


def poem_bodies(path):
    """-> the bodies (paragraphs joined) of the poems in one chinese-poetry JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            poems = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"source {path} is not UTF-8 JSON ({e})") from None
    if not isinstance(poems, list):
        raise UserError(f"source {path} is not a JSON array of poems (the chinese-poetry schema)")
    bodies = []
    for k, poem in enumerate(poems):
        paras = poem.get("paragraphs") if isinstance(poem, dict) else None
        if not isinstance(paras, list) or not all(isinstance(p, str) for p in paras):
            raise UserError(f"source {path}: poem {k} has no list of strings 'paragraphs' "
                            f"(the chinese-poetry schema)")
        bodies.append("".join(paras))
    return bodies


def chinese_poetry_json(convert, paths):
    """chinese-poetry JSON files -> one poem body per line, in source order.

    convert["select"]: "regular-verse" applies regular_verse_verdict and drops exact duplicate
    bodies (keeping the first); "all" keeps every non-empty poem, with line breaks and
    surrounding white space inside a body removed.
    """
    select = convert.get("select", "all")
    if select not in ("all", "regular-verse"):
        raise UserError(f"unknown chinese-poetry selection {select!r} in the registry (all | regular-verse)")
    kept, seen, dropped, total = [], set(), Counter(), 0
    for p in paths:
        for body in poem_bodies(p):
            total += 1
            if select == "all":
                body = "".join(line.strip() for line in body.splitlines())
                why = None if body else "empty"
            else:
                why = regular_verse_verdict(body) or ("duplicate" if body in seen else None)
            if why:
                dropped[why] += 1
                continue
            seen.add(body)
            kept.append(body)
    if not kept:
        raise UserError(f"no poem in {len(paths)} source file(s) passed the {select!r} selection")
    report = f"{len(kept):,} of {total:,} poems kept"
    if dropped:
        report += " (dropped: " + ", ".join(f"{n:,} {why}" for why, n in dropped.most_common()) + ")"
    return "\n".join(kept) + "\n", report


CONVERTERS = {"text": plain_text, "chinese-poetry-json": chinese_poetry_json}
