"""The corpus registry, the converters, the built-in corpora, figures and suggestions, and the CLI group."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter

import pytest
from click.testing import CliRunner

from corpus_helpers import FixtureServer, entry, poems_json, registry, source
from lstm_engine.corpora import registry as corpora
from lstm_engine.cli import main
from lstm_engine.corpora.converters import chinese_poetry_json, python_stdlib, regular_verse_verdict
from lstm_engine.core.data import load_corpus
from lstm_engine.errors import UserError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "corpora")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LSTM_ENGINE_BASE_URL", raising=False)
    monkeypatch.delenv("LSTM_ENGINE_REGISTRY", raising=False)
    return tmp_path / "cache"


# -- registry ----------------------------------------------------------------------------------------

def test_builtin_registry_is_installed_as_package_data():
    from importlib.resources import files
    data = json.loads(files("lstm_engine.corpora_data").joinpath("registry.json").read_text(encoding="utf-8"))
    assert {e["name"] for e in data["corpora"]} >= {"python-docs", "python-source", "tinyshakespeare", "tang-poems"}


def test_every_download_entry_is_pinned_and_licensed():
    for name, e in corpora.load_registry().items():
        assert e["license"] and e["convert"].get("rule"), name
        if not e.get("builtin"):
            assert e["base_url"].startswith("https://") and e["sources"], name
            assert all(s["bytes"] > 0 and len(s["sha256"]) == 64 for s in e["sources"]), name


def test_tang_sources_match_the_shared_listing():
    listing = os.path.join(SHARED, "tang-sources.json")
    if not os.path.exists(listing):
        pytest.skip("../shared/corpora is not beside this checkout")
    with open(listing, encoding="utf-8") as f:
        shared = json.load(f)
    e = corpora.get_entry("tang-poems")
    assert e["base_url"] == shared["url_template"].replace("{path}", "")
    assert e["sources"] == [{"path": s["path"], "bytes": s["bytes"], "sha256": s["sha256"]} for s in shared["files"]]
    assert corpora.get_entry("tang-poems-all")["sources"] == e["sources"]


def test_source_urls_percent_encode_utf8_paths():
    e = corpora.get_entry("tang-poems")
    url = corpora.source_url(e, e["sources"][0])
    assert url.endswith("/99ebbef7e1345c0985c44b9fd96a3f9e776f117b/%E5%85%A8%E5%94%90%E8%AF%97/poet.tang.0.json")
    mirrored = corpora.source_url(e, e["sources"][0], base_url="http://127.0.0.1:1/m/")
    assert mirrored.startswith("http://127.0.0.1:1/m/%E5")


def test_bad_registry_entries_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="lacks license"):
        corpora.load_registry({"corpora": [{"name": "x", "description": "", "language": "", "convert": {}}]})
    bad = entry("x", "https://example.invalid/", [{"path": "a", "bytes": 1, "sha256": "nothex"}])
    with pytest.raises(UserError, match="hex sha256"):
        corpora.load_registry(registry(bad))
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        corpora.load_registry(str(tmp_path / "r.json"))


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LSTM_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpora.cache_dir() == str(tmp_path / "xdg" / "lstm-engine")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert corpora.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "lstm-engine")


def test_unknown_names_and_builtins():
    with pytest.raises(UserError, match="unknown corpus 'nope'.*tang-poems"):
        load_corpus("nope")
    with pytest.raises(UserError, match="built in"):
        corpora.fetch("python-docs")
    assert load_corpus("python-docs") == load_corpus("python-docs") != ""


# -- conversion ---------------------------------------------------------------------------------------

GOOD5 = "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。"
GOOD7 = "朝辭白帝彩雲間，千里江陵一日還。兩岸猿聲啼不住，輕舟已過萬重山。"
GOOD8 = "國破山河在，城春草木深。感時花濺淚，恨別鳥驚心。烽火連三月，家書抵萬金。白頭搔更短，渾欲不勝簪。"
DROPS = {
    "山中相送罷，日暮掩柴扉。春草明年綠，王孫歸不歸？": "characters",       # ？ is not allowed
    "山中相送罷，日暮掩柴扉。（一作春草）春草明年綠，王孫歸不歸。": "characters",
    "山中相送罷，日暮掩□扉。春草明年綠，王孫歸不歸。": "characters",       # lacuna
    "山中相送罷，日暮掩柴扉。春草明年綠，王孫歸不𠀀。": "characters",       # Extension B
    "山中相送罷，日暮掩柴扉。春草明年綠，王孫歸不歸": "fragment",
    "山中相送罷，日暮掩柴扉。春草明年綠。王孫歸不歸。": "punctuation",
    "山中相送罷，，日暮掩柴扉。春草明年綠，王孫歸不歸。": "punctuation",
    "山中相送罷，日暮掩柴扉。春草明年綠，王孫歸不歸。山中相送罷，日暮掩柴扉。": "form",   # 6 clauses
    "山中相送罷，日暮掩柴扉。": "form",                                      # 2 clauses
    "山中相送罷，日暮掩柴扉兮。春草明年綠，王孫歸不歸。": "form",           # 5 and 6
    "山中相送罷罷，日暮掩柴扉扉。春草明年綠綠，王孫歸不歸歸。": "form",     # all 6
}


def test_regular_verse_rules():
    for body in (GOOD5, GOOD7, GOOD8):
        assert regular_verse_verdict(body) is None, body
    for body, why in DROPS.items():
        assert regular_verse_verdict(body) == why, body


def test_chinese_poetry_json_conversion(tmp_path):
    a, b = tmp_path / "poet.tang.0.json", tmp_path / "poet.tang.1000.json"
    a.write_bytes(poems_json([GOOD5, *DROPS, GOOD7]))
    b.write_bytes(poems_json([GOOD5, GOOD8]))                                   # GOOD5 again: a duplicate
    text, report = chinese_poetry_json({"select": "regular-verse"}, [str(a), str(b)])
    assert text == f"{GOOD5}\n{GOOD7}\n{GOOD8}\n"
    assert report.startswith("3 of 15 poems kept") and "4 characters" in report and "1 duplicate" in report
    text_all, _ = chinese_poetry_json({"select": "all"}, [str(a), str(b)])
    assert text_all.splitlines() == [GOOD5, *DROPS, GOOD7, GOOD5, GOOD8]


def test_conversion_rejects_other_schemas(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps([{"title": "no paragraphs"}]))
    with pytest.raises(UserError, match="paragraphs"):
        chinese_poetry_json({"select": "all"}, [str(p)])


def test_selection_keeps_every_poem_of_the_shared_reference(tmp_path):
    """Each line of the shared tang-poems.txt passes the rules, and converting those lines as
    chinese-poetry JSON reproduces the file byte for byte (no false drops)."""
    ref = os.path.join(SHARED, "tang-poems.txt")
    if not os.path.exists(ref):
        pytest.skip("../shared/corpora is not beside this checkout")
    with open(ref, encoding="utf-8") as f:
        text = f.read()
    bodies = text.splitlines()
    path = tmp_path / "poet.tang.0.json"
    path.write_bytes(poems_json(bodies))
    out, _ = chinese_poetry_json({"select": "regular-verse"}, [str(path)])
    assert hashlib.sha256(out.encode()).hexdigest() == corpora.get_entry("tang-poems")["text"]["sha256"]


def test_fetched_tang_corpus_end_to_end_over_http(tmp_path):
    server = FixtureServer()
    try:
        files = {"全唐诗/poet.tang.0.json": poems_json([GOOD5, *DROPS]),
                 "全唐诗/poet.tang.1000.json": poems_json([GOOD7, GOOD8])}
        for p, data in files.items():
            server.files["/" + p] = data
        conv = {"kind": "chinese-poetry-json", "select": "regular-verse", "rule": "test"}
        reg = registry(entry("mini-tang", server.url, [source(p, d) for p, d in files.items()], conv))
        assert corpora.load_text("mini-tang", registry=reg, quiet=True) == f"{GOOD5}\n{GOOD7}\n{GOOD8}\n"
    finally:
        server.close()


# -- built-in python-source -------------------------------------------------------------------------

def test_python_stdlib_order_exclusions_and_cap(tmp_path):
    root = tmp_path / "lib"
    for rel, body in {"b.py": "B = 2\n", "a.py": "A = 1", "pkg/z.py": "Z = 26\n", "test/t.py": "T\n",
                      "pkg/test/u.py": "U\n", "c.txt": "not python\n", "d.py": "D" * 100}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    (root / "bad.py").write_bytes(b"\xff\xfe latin junk")
    conv = {"exclude_dirs": ["test"], "header": "## {path}\n", "max_chars": 10 ** 6}
    text = python_stdlib(conv, root=str(root))
    assert text == "## a.py\nA = 1\n## b.py\nB = 2\n## d.py\n" + "D" * 100 + "\n## pkg/z.py\nZ = 26\n"
    capped = python_stdlib(dict(conv, max_chars=len("## a.py\nA = 1\n## b.py\nB = 2\n") + 5), root=str(root))
    assert capped == "## a.py\nA = 1\n## b.py\nB = 2\n"                # cut at a file boundary


def test_python_source_builtin_is_stable_and_capped():
    e = corpora.get_entry("python-source")
    text = load_corpus("python-source")
    assert 0 < len(text) <= e["convert"]["max_chars"]
    assert text.startswith("# ---- ") and text == load_corpus("python-source")
    assert "# ---- pydoc_data/" not in text and "/test/" not in text.split("\n", 1)[0]


# -- figures and suggestions ------------------------------------------------------------------------

def test_text_stats_figures():
    s = corpora.text_stats("aab\n")
    assert (s["chars"], s["symbols"], s["lines"]) == (4, 3, 1)
    assert s["entropy_bits"] == pytest.approx(1.5)
    assert (s["max_vocab"], s["embed_size"]) == (0, 64)
    assert corpora.text_stats("")["chars"] == 0


def test_suggestions_for_a_large_alphabet():
    # 400 symbols: 300 seen 10 times, 100 seen twice
    counts = Counter({chr(0x4E00 + k): (10 if k < 300 else 2) for k in range(400)})
    assert corpora.suggest_max_vocab(counts) == 301
    assert corpora.suggest_embed_size(301) == 64 and corpora.suggest_embed_size(200) == 64
    rare_only = Counter({chr(0x4E00 + k): 1 for k in range(1000)})      # nothing seen often: no suggestion
    assert corpora.suggest_max_vocab(rare_only) == 0
    huge = Counter({chr(0x4E00 + k): 5 for k in range(60_001)}) + Counter({"x": 1})
    assert corpora.suggest_max_vocab(huge) == 50_000                     # capped at data.VOCAB_LIMIT
    assert corpora.suggest_embed_size(4633) == 128 and corpora.suggest_embed_size(10 ** 6) == 512
    text = "".join(ch * n for ch, n in counts.items())
    s = corpora.text_stats(text)
    assert s["max_vocab"] == 301 and s["coverage"] == pytest.approx(3000 / 3200)


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_corpus_info_on_any_utf8_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("春眠不覺曉，處處聞啼鳥。\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["corpus", "info", str(p), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["chars"], d["symbols"]) == (13, 12)                     # 處 twice
    assert d["entropy_bits"] == pytest.approx(-(2 / 13) * math.log2(2 / 13) + (11 / 13) * math.log2(13))
    (tmp_path / "empty.txt").write_bytes(b"")
    r = CliRunner().invoke(main, ["corpus", "info", str(tmp_path / "empty.txt")])
    assert r.exit_code == 0 and "chars: 0" in r.output
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    r = CliRunner().invoke(main, ["corpus", "info", str(tmp_path / "latin.txt")])
    assert r.exit_code == 2 and "not valid utf-8" in r.output and len(r.output.strip().splitlines()) == 1


def test_cli_corpus_list_and_fetch(tmp_path, monkeypatch):
    server = FixtureServer()
    try:
        data = "甲乙丙丁。\n".encode()
        server.files["/x/fixture.txt"] = data
        reg_file = tmp_path / "registry.json"
        reg_file.write_text(json.dumps(registry(entry("fixture", server.url, [source("x/fixture.txt", data)]))))
        monkeypatch.setenv("LSTM_ENGINE_REGISTRY", str(reg_file))
        r = CliRunner().invoke(main, ["corpus", "list"])
        assert r.exit_code == 0
        rows = {line.split()[0]: line for line in r.output.splitlines()}
        assert rows["fixture"].endswith("not cached") and rows["python-docs"].endswith("built in")
        r = CliRunner().invoke(main, ["corpus", "fetch", "fixture"])
        assert r.exit_code == 0 and r.output.strip().endswith(os.path.join("corpora", "fixture.txt"))
        r = CliRunner().invoke(main, ["corpus", "list", "--json"])
        assert {"name": "fixture", "status": "cached"}.items() <= json.loads(r.output.splitlines()[-1]).items()
        r = CliRunner().invoke(main, ["corpus", "info", "fixture", "--sources"])
        assert r.output.strip() == f"{server.url}/x/fixture.txt  {len(data)}  {hashlib.sha256(data).hexdigest()}"
    finally:
        server.close()
    r = CliRunner().invoke(main, ["corpus", "fetch", "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: unknown corpus 'nope'")
