"""Named corpora: the registry, the cache, and the resolver behind every --corpus option.

`--corpus NAME|PATH` resolves in this order:
    1. a built-in name (python-docs, python-source): made from the running Python, offline;
    2. a registry name already in the cache (its text verified against the cache manifest);
    3. a registry name not yet cached: its sources are downloaded (progress bar on stderr),
       verified by sha256, converted to text and cached;  on failure a one-line UserError
       says how to fetch the sources by hand (`corpus fetch NAME --from ...`) or pass a file;
    4. otherwise a path to a text file.
Names win over files of the same name; write ./NAME for the file.

Cache layout ($LSTM_ENGINE_CACHE, else $XDG_CACHE_HOME/lstm-engine, else ~/.cache/lstm-engine):
    sources/SHA16-BASENAME   verified source files, shared by the entries that use them
    corpora/NAME.txt         the converted text;  corpora/NAME.json its manifest (sha256, figures)
Overrides for mirrors and tests: $LSTM_ENGINE_BASE_URL (or base_url=) replaces every entry's
base_url;  $LSTM_ENGINE_REGISTRY (or registry=) names a registry file whose entries are added
to (or replace) the built-in ones.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import posixpath
import re
import sys
import time
import urllib.parse
from collections import Counter

from .converters import BUILTINS, CONVERTERS
from .text import VOCAB_LIMIT, read_text_file
from ..storage.atomic import atomic_write_bytes
from ..storage.files import display_name
from .download import DownloadError, copy_verified, download, sha256_file, verify_file
from ..core import environment as env
from ..errors import UserError

ENV_CACHE = "LSTM_ENGINE_CACHE"
ENV_BASE_URL = "LSTM_ENGINE_BASE_URL"
ENV_REGISTRY = "LSTM_ENGINE_REGISTRY"
REQUIRED = ("name", "description", "language", "license", "convert")
SHA256 = re.compile(r"[0-9a-f]{64}")
# a corpus name becomes a file name in the cache: no path separator, no leading dot, no upper case
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_RULE = "1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
BIG_VOCAB = 256          # above this many symbols, --max-vocab and --embed-size get corpus-specific suggestions
MIN_COUNT = 5            # a symbol seen fewer times than this is folded into <unk> by the suggested --max-vocab


# -- registry ------------------------------------------------------------------------------------

def _builtin_registry_text():
    """registry.json as installed (lstm_engine.corpora_data) or beside the source checkout."""
    try:
        from importlib.resources import files
        res = files("lstm_engine.corpora_data").joinpath("registry.json")
        if res.is_file():
            return res.read_text(encoding="utf-8"), "lstm_engine.corpora_data/registry.json"
    except ModuleNotFoundError:
        pass
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpora", "registry.json")
    with open(path, encoding="utf-8") as f:
        return f.read(), path


def check_name(name):
    """UserError unless `name` is a safe corpus name (NAME): it becomes a file name in the cache."""
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise UserError(f"{name!r} is not a corpus name ({NAME_RULE}); pass a registry name "
                        f"(`lstm-engine corpus list`) or a path to a text file")


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _safe_source_path(p):
    parts = p.split("/") if isinstance(p, str) else []
    return bool(parts) and "\0" not in p and all(s not in ("", ".", "..") for s in parts)


def _field(cond, where, name, field, what):
    if not cond:
        raise UserError(f"{where}: entry {name!r} field {field!r} must be {what}")


def _check_entry(e, where):
    """One registry entry: required fields, their types and ranges; UserError naming the entry and field."""
    name = e.get("name")
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise UserError(f"{where}: entry name {name!r} is not a corpus name ({NAME_RULE})")
    missing = [k for k in REQUIRED if k not in e]
    if missing:
        raise UserError(f"{where}: entry {name!r} lacks {', '.join(missing)}")
    for k in ("description", "language", "license", "origin"):
        _field(k not in e or isinstance(e[k], str), where, name, k, "a string")
    conv = e["convert"]
    _field(isinstance(conv, dict) and isinstance(conv.get("kind"), str), where, name, "convert",
           "an object with a string 'kind'")
    _field(isinstance(conv.get("rule", ""), str), where, name, "convert.rule", "a string")
    _field(isinstance(e.get("builtin", False), bool), where, name, "builtin", "true or false")
    if e.get("builtin"):
        if conv["kind"] not in BUILTINS:
            raise UserError(f"{where}: built-in entry {name!r} names unknown kind {conv['kind']!r}")
        _check_builtin_convert(conv, where, name)
        return
    if conv["kind"] not in CONVERTERS:
        raise UserError(f"{where}: entry {name!r} names unknown converter {conv['kind']!r} "
                        f"({', '.join(CONVERTERS)})")
    _field(isinstance(conv.get("select", ""), str), where, name, "convert.select", "a string")
    _field(isinstance(e.get("base_url"), str) and e["base_url"].startswith(("http://", "https://")),
           where, name, "base_url", "an http:// or https:// URL")
    _field(isinstance(e.get("sources"), list) and e["sources"], where, name, "sources", "a non-empty list")
    for k, s in enumerate(e["sources"]):
        _field(isinstance(s, dict), where, name, f"sources[{k}]", "an object with path, bytes and sha256")
        _field(_safe_source_path(s.get("path")), where, name, f"sources[{k}].path",
               "a relative path with no '.', '..' or empty parts")
        _field(_count(s.get("bytes")), where, name, f"sources[{k}].bytes", "a non-negative integer")
        _field(isinstance(s.get("sha256"), str) and SHA256.fullmatch(s["sha256"]), where, name,
               f"sources[{k}].sha256", "a hex sha256 (64 characters 0-9a-f)")
    text = e.get("text", {})
    _field(isinstance(text, dict), where, name, "text", "an object")
    for k in ("chars", "symbols"):
        _field(k not in text or _count(text[k]), where, name, f"text.{k}", "a non-negative integer")
    _field("sha256" not in text or isinstance(text["sha256"], str) and SHA256.fullmatch(text["sha256"]),
           where, name, "text.sha256", "a hex sha256 (64 characters 0-9a-f)")


def _check_builtin_convert(conv, where, name):
    """The fields python_stdlib reads (pydoc-topics reads none)."""
    if conv["kind"] != "python-stdlib":
        return
    _field(_count(conv.get("max_chars")), where, name, "convert.max_chars", "a non-negative integer")
    ex = conv.get("exclude_dirs", [])
    _field(isinstance(ex, list) and all(isinstance(d, str) for d in ex), where, name, "convert.exclude_dirs",
           "a list of strings")
    try:
        conv["header"].format(path="p")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        raise UserError(f"{where}: entry {name!r} field 'convert.header' must be a string whose only "
                        f"placeholder is {{path}}") from None


def parse_registry(data, where="registry"):
    """Registry JSON object -> {name: entry}, checked."""
    entries = data.get("corpora") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{where} is not a corpus registry (it needs a list 'corpora')")
    out = {}
    for e in entries:
        if not isinstance(e, dict):
            raise UserError(f"{where}: every entry of 'corpora' must be an object")
        _check_entry(e, where)
        out[e["name"]] = e
    return out


@functools.lru_cache(maxsize=1)
def _builtin_registry():
    text, where = _builtin_registry_text()
    return parse_registry(json.loads(text), where)


def _read_registry_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"cannot read the corpus registry {path!r}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"the corpus registry {path!r} is not valid JSON ({e})") from None


def load_registry(registry=None):
    """{name: entry}: the built-in registry plus $LSTM_ENGINE_REGISTRY plus `registry`
    (a path or a registry object), later entries replacing earlier ones of the same name."""
    merged = dict(_builtin_registry())
    for extra in (env.get(ENV_REGISTRY), registry):
        if not extra:
            continue
        data = extra if isinstance(extra, dict) else _read_registry_file(extra)
        merged.update(parse_registry(data, "registry" if isinstance(extra, dict) else str(extra)))
    return merged


def names(registry=None):
    return list(load_registry(registry))


# -- cache ---------------------------------------------------------------------------------------

def cache_dir():
    """$LSTM_ENGINE_CACHE, else $XDG_CACHE_HOME/lstm-engine, else ~/.cache/lstm-engine."""
    d = env.get(ENV_CACHE)
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):                       # the XDG spec ignores relative values
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lstm-engine")


def text_path(name):
    check_name(name)
    return os.path.join(cache_dir(), "corpora", name + ".txt")


def _manifest_path(name):
    check_name(name)
    return os.path.join(cache_dir(), "corpora", name + ".json")


def source_path(src):
    """Content-addressed place of a verified source file in the cache."""
    return os.path.join(cache_dir(), "sources", f"{src['sha256'][:16]}-{posixpath.basename(src['path'])}")


def _fingerprint(entry):
    """What the cached text was made from: a change in pinned sources or rule invalidates it."""
    return {"sources": [s["sha256"] for s in entry["sources"]], "convert": entry["convert"]}


def _manifest(entry):
    try:
        with open(_manifest_path(entry["name"]), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("fingerprint") == _fingerprint(entry) else None


def cached_path(entry):
    """Path of the entry's cached text if it is complete and intact, else None (it is remade).

    Where the entry pins the text's sha256, a cached text that differs is a UserError instead: the file
    is left as it is and the message says how to fetch it again."""
    if entry.get("builtin"):
        return None
    m, path = _manifest(entry), text_path(entry["name"])
    if m is None or not os.path.isfile(path):
        return None
    digest, pinned = sha256_file(path), entry.get("text", {}).get("sha256")
    if pinned and digest != pinned:
        raise UserError(f"the cached text of corpus {entry['name']} ({path}) is damaged: sha256 {digest[:16]}..., "
                        f"the registry pins {pinned[:16]}...; fetch it again with "
                        f"`lstm-engine corpus fetch {entry['name']} --force`")
    return path if digest == m.get("sha256") else None


# -- fetching --------------------------------------------------------------------------------------

def source_url(entry, src, base_url=None):
    base = base_url or env.get(ENV_BASE_URL) or entry["base_url"]
    return base.rstrip("/") + "/" + urllib.parse.quote(src["path"], safe="/")


def _say(msg, quiet):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress(total, label, quiet):
    """A byte progress bar on stderr (click.progressbar), or a no-op when quiet."""
    if quiet:
        yield lambda n: None
        return
    import click
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False) as bar:
        yield bar.update


def _hand_fetch_hint(entry, err):
    name = entry["name"]
    if len(entry["sources"]) == 1:
        how = f"fetch that file by hand and run `lstm-engine corpus fetch {name} --from FILE`"
    else:
        how = (f"put its {len(entry['sources'])} source files (`lstm-engine corpus info {name} --sources` "
               f"lists them) in a folder and run `lstm-engine corpus fetch {name} --from FOLDER`")
    return (f"could not download corpus {name} from {err.url} ({err.reason}); {how}, "
            f"or pass --corpus PATH to a local text file")


def _valid_source(src):
    path = source_path(src)
    if not os.path.exists(path):
        return False
    try:
        verify_file(path, src["bytes"], src["sha256"])
        return True
    except DownloadError:
        os.unlink(path)                                # a damaged copy: fetch it again
        return False


def _locate(from_path, src, single):
    """Where a by-hand copy of `src` is under --from (a file for a one-source corpus, or a folder)."""
    if os.path.isfile(from_path) and single:
        return from_path
    for cand in (os.path.join(from_path, *src["path"].split("/")),
                 os.path.join(from_path, posixpath.basename(src["path"]))):
        if os.path.isfile(cand):
            return cand
    raise UserError(f"{src['path']} is not in {from_path!r}; pass the folder that holds the source files "
                    f"(at their registry paths or by file name)")


def _obtain_sources(entry, base_url, from_path, quiet):
    """Make every source of `entry` present and verified in the cache; -> their paths."""
    need = [s for s in entry["sources"] if not _valid_source(s)]
    if from_path:
        for s in need:
            try:
                copy_verified(_locate(from_path, s, len(entry["sources"]) == 1), source_path(s),
                              s["bytes"], s["sha256"])
            except DownloadError as e:
                raise UserError(f"{e.url} is not the pinned {s['path']} ({e.reason}); "
                                f"use the file from {entry.get('origin', entry['base_url'])}") from None
    elif need:
        total = sum(s["bytes"] for s in need)
        host = urllib.parse.urlsplit(source_url(entry, need[0], base_url)).netloc or "a local mirror"
        _say(f"downloading corpus {entry['name']}: {len(need)} file(s), {total / 1e6:.1f} MB from {host}", quiet)
        with _progress(total, entry["name"], quiet) as advance:
            for s in need:
                url = source_url(entry, s, base_url)
                try:
                    download(url, source_path(s), s["bytes"], s["sha256"], progress=advance)
                except DownloadError as e:
                    raise UserError(_hand_fetch_hint(entry, e)) from None
    return [source_path(s) for s in entry["sources"]]


def fetch(name, registry=None, base_url=None, from_path=None, force=False, quiet=False):
    """Make corpus `name` available in the cache (download or --from, verify, convert); -> text path."""
    entry = get_entry(name, registry)
    if entry.get("builtin"):
        raise UserError(f"corpus {name} is built in (made from the running Python); there is nothing to fetch")
    path = None if force else cached_path(entry)
    if path:
        return path
    paths = _obtain_sources(entry, base_url, from_path, quiet)
    text, report = CONVERTERS[entry["convert"]["kind"]](entry["convert"], paths)
    data = text.encode("utf-8")
    _check_pinned_text(entry, data)
    path = text_path(name)
    atomic_write_bytes(path, data, make_dirs=True)   # text first: without its manifest it is not trusted
    digest = sha256_file(path)
    manifest = {"name": name, "fingerprint": _fingerprint(entry), "sha256": digest, "bytes": len(data),
                "chars": len(text), "symbols": len(set(text)), "report": report,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_bytes(_manifest_path(name), json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
    ref = entry.get("text", {}).get("sha256")
    check = "; matches the reference sha256" if ref == digest else ""     # a differing text was refused above
    _say(f"corpus {name}: {report}; {len(text):,} characters saved to {path}{check}", quiet)
    return path


def _check_pinned_text(entry, data):
    """UserError, before anything is written, when the converted text differs from the entry's pinned sha256."""
    pinned = entry.get("text", {}).get("sha256")
    digest = hashlib.sha256(data).hexdigest()
    if pinned and digest != pinned:
        raise UserError(f"the text made from corpus {entry['name']}'s verified sources has sha256 {digest[:16]}..., "
                        f"not the pinned {pinned[:16]}... (the cached text, if any, is unchanged); pass --corpus "
                        f"PATH to a text file instead")


# -- resolving -------------------------------------------------------------------------------------

def get_entry(name, registry=None):
    check_name(name)
    reg = load_registry(registry)
    if name not in reg:
        raise UserError(f"unknown corpus {name!r}; known corpora: {', '.join(reg)} (see `lstm-engine corpus list`)")
    return reg[name]


def builtin_text(entry):
    return BUILTINS[entry["convert"]["kind"]](entry["convert"])


def load_text(name_or_path="python-docs", encoding="utf-8", registry=None, base_url=None, quiet=False):
    """Text of a corpus: built-in -> cache -> download for registry names; else a UTF-8 (or
    `encoding`) text file.  Bad names and failed downloads raise one-line UserErrors."""
    reg = load_registry(registry)
    entry = reg.get(name_or_path)
    if entry is not None:
        if entry.get("builtin"):
            return builtin_text(entry)
        return read_text_file(fetch(name_or_path, registry, base_url, quiet=quiet), "utf-8")
    if not os.path.exists(name_or_path) and os.sep not in name_or_path and "." not in name_or_path:
        raise UserError(f"unknown corpus {name_or_path!r}; use a corpus name ({', '.join(reg)}; "
                        f"see `lstm-engine corpus list`) or a path to a UTF-8 text file")
    return read_text_file(name_or_path, encoding)


# -- figures and suggestions -----------------------------------------------------------------------

def suggest_max_vocab(counts):
    """--max-vocab for a corpus with these symbol counts: 0 (keep all) up to BIG_VOCAB symbols;
    above, the symbols seen at least MIN_COUNT times plus one <unk>, at most VOCAB_LIMIT.
    0 (no suggestion) where that keeps every symbol or fewer than two."""
    if len(counts) <= BIG_VOCAB:
        return 0
    n = sum(1 for c in counts.values() if c >= MIN_COUNT)
    return 0 if n >= len(counts) or n < 2 else min(n + 1, VOCAB_LIMIT)


def suggest_embed_size(vocab_size):
    """--embed-size: the engine default 64 up to BIG_VOCAB symbols; above, about 2*sqrt(V)
    rounded to a multiple of 32, within [64, 512]."""
    if vocab_size <= BIG_VOCAB:
        return 64
    return int(min(512, max(64, 32 * round(2 * math.sqrt(vocab_size) / 32))))


def text_stats(text):
    """Characters, distinct symbols, lines, unigram entropy (bits/char) and training suggestions."""
    counts = Counter(text)
    n = len(text)
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0
    max_vocab = suggest_max_vocab(counts)
    kept = max_vocab or len(counts)
    top = sorted(counts.values(), reverse=True)[:max_vocab - 1] if max_vocab else counts.values()
    return {"chars": n, "symbols": len(counts), "lines": text.count("\n"), "entropy_bits": entropy,
            "max_vocab": max_vocab, "embed_size": suggest_embed_size(kept),
            "coverage": sum(top) / n if n else 1.0}


def suggest_train_options(text):
    """{'embed_size', 'max_vocab'} that `train` uses when those options are not given."""
    s = text_stats(text)
    return {"embed_size": s["embed_size"], "max_vocab": s["max_vocab"]}


def describe(name_or_path, encoding="utf-8", registry=None, base_url=None, with_text=True, quiet=False):
    """Registry facts (for a name) and text figures (fetching if needed) as a dict."""
    reg = load_registry(registry)
    entry = reg.get(name_or_path)
    out = {}
    if entry is not None:
        out.update({k: entry[k] for k in ("name", "description", "language", "license") if k in entry})
        out["origin"] = entry.get("origin", "built in")
        out["rule"] = entry["convert"].get("rule", "")
        if not entry.get("builtin"):
            out["download_bytes"] = sum(s["bytes"] for s in entry["sources"])
            out["sources"] = [{"url": source_url(entry, s, base_url), "bytes": s["bytes"], "sha256": s["sha256"]}
                              for s in entry["sources"]]
        if with_text:
            if entry.get("builtin"):
                text = builtin_text(entry)
            else:
                out["path"] = fetch(name_or_path, registry, base_url, quiet=quiet)
                text = read_text_file(out["path"], "utf-8")
            out.update(text_stats(text))
        return out
    if not os.path.exists(name_or_path) and os.sep not in name_or_path and "." not in name_or_path:
        get_entry(name_or_path, registry)              # raises the unknown-name error
    out["path"] = display_name(name_or_path)          # printed: a name that is not UTF-8 shows U+FFFD
    out.update(text_stats(read_text_file(name_or_path, encoding, strict=False)))
    return out


def listing(registry=None):
    """One row per registry entry: name, language, chars (None if unknown), download bytes, status."""
    rows = []
    for name, e in load_registry(registry).items():
        if e.get("builtin"):
            rows.append({"name": name, "language": e["language"], "chars": len(builtin_text(e)),
                         "download_bytes": None, "status": "built in"})
            continue
        m = _manifest(e)
        cached = m is not None and cached_path(e) is not None
        chars = m["chars"] if cached else e.get("text", {}).get("chars")
        rows.append({"name": name, "language": e["language"], "chars": chars,
                     "download_bytes": sum(s["bytes"] for s in e["sources"]),
                     "status": "cached" if cached else "not cached"})
    return rows
