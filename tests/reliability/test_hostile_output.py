"""Markup and text I/O: user text (vocabulary symbols, the text stepped through, file and directory
names) escaped in every format explain and inspect write, markdown included; a strict output encoding
that cannot write a character; stdout closed early by `| head -c 10`."""
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import lstm_engine as le

from helpers import markov_text, run_cli, tiny_cfg

HOSTILE = "<blink>x</blink> | `c` *e* _f_ [g](h) & \\ \"q\""     # every markdown / HTML character
TEXT = "a|b`c*d_e<f>g[h]i\nj&k\\l"                             # explain --text: 23 characters, 22 steps
NS = {"h": "http://www.w3.org/1999/xhtml"}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A tiny checkpoint whose vocabulary holds the markup characters, in a directory named with them."""
    d = tmp_path_factory.mktemp("markup")
    out = d / "run <i>|x_[y]`*&"
    le.train(tiny_cfg(out, steps=2, log_every=0), text=(markov_text(300) + "\n" + HOSTILE + "\n") * 4)
    return str(out / "latest.safetensors")


def unescaped(line, ch):
    """Indexes of `ch` in a markdown line that no backslash escapes (an even run of backslashes before it)."""
    found = []
    for i, c in enumerate(line):
        if c == ch:
            k = i
            while k > 0 and line[k - 1] == "\\":
                k -= 1
            if (i - k) % 2 == 0:
                found.append(i)
    return found


def check_markdown(text):
    """Every table row has its header's cells, no code fence closes early, and outside fences no character
    of user text opens HTML, a link, emphasis or code (the renderer's own `*computed by*` line aside)."""
    fence, cols, rows = None, None, 0
    for line in text.split("\n"):
        if fence:
            if re.fullmatch(r"`{%d,}\s*" % len(fence), line):
                fence = None
            continue
        m = re.match(r"(`{3,})\w*$", line)
        if m:
            fence = m.group(1)
            continue
        if line.startswith("|"):
            n = len(unescaped(line, "|"))
            cols = n if cols is None else cols
            assert n == cols, line
            rows += 1
        else:
            cols = None
        if not line.startswith("*computed by*"):
            for ch in "<>`*_[]":
                assert not unescaped(line, ch), (ch, line)
    assert fence is None
    return rows


@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru"])
def test_markdown_escapes_the_text_and_vocabulary_of_a_tiny_model(cell):
    r = run_cli(["explain", "--cell", cell, "--text", TEXT, "--format", "markdown", "--backward"])
    assert r.exit_code == 0, r.output
    assert check_markdown(r.stdout) >= len(TEXT) + 2                     # the loss table kept all its rows
    assert "\\<f\\>" in r.stdout and "\\|" in r.stdout


def test_markdown_of_a_checkpoint_escapes_its_vocabulary_and_path(hostile_run):
    r = run_cli(["explain", "--checkpoint", hostile_run, "--text", "<blink>|`c`*[g]&", "--format", "markdown",
                 "--backward", "--max-check", "4"])
    assert r.exit_code == 0, r.output
    check_markdown(r.stdout)
    assert "run \\<i\\>\\|x\\_\\[y\\]\\`\\*\\&" in r.stdout


def test_html_of_explain_and_inspect_holds_user_text_as_text(hostile_run, tmp_path):
    """The pages parse as XHTML and no element comes from user text: it is all character data."""
    page = tmp_path / "explain.html"
    r = run_cli(["explain", "--checkpoint", hostile_run, "--text", "<blink>|x", "--format", "html", "-o", page])
    assert r.exit_code == 0, r.output
    source = tmp_path / "<script>x<blink>y &amp;.txt"
    source.write_text(HOSTILE * 3, encoding="utf-8")
    for args in (["--prime", HOSTILE], ["--text", source]):
        out = tmp_path / "inspect.html"
        r = run_cli(["inspect", hostile_run, *args, "--html", out])
        assert r.exit_code == 0, r.output
        root = ET.fromstring(out.read_text(encoding="utf-8").split("\n", 1)[1])
        assert not root.findall(".//h:blink", NS) + root.findall(".//h:script", NS)
        assert "<blink>x</blink>" in "".join(root.itertext())
    root = ET.fromstring(page.read_text(encoding="utf-8").split("\n", 1)[1])
    assert not root.findall(".//h:blink", NS) and "'<'" in "".join(root.itertext())


def test_text_output_shows_control_characters_escaped(tmp_path):
    """A terminal escape sequence in a checkpoint's path is shown, not sent to the terminal."""
    out = tmp_path / "run\x1b[31mred"
    le.train(tiny_cfg(out, steps=1, log_every=0), text=markov_text(200))
    r = run_cli(["explain", "--checkpoint", out / "latest.safetensors", "--text", "ax.a"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "run\\x1b[31mred" in r.stdout


# -- text I/O of a real process -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chinese_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zh") / "run"
    poem = "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。\n"
    le.train(tiny_cfg(out, steps=2, log_every=0), text=poem * 30)
    return str(out / "latest.safetensors")


def cli(args, env=None, **kw):
    """`python -m lstm_engine.cli ARGS` in a fresh process running this same package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(le.__file__)))
    env = dict(os.environ, PYTHONPATH=root, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "lstm_engine.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.parametrize("encoding", ["latin-1:strict", "cp1252:strict"])
def test_a_strict_output_encoding_is_one_line_not_a_traceback(chinese_run, encoding):
    for args in (["generate", chinese_run, "--prime", "白", "--length", "20", "--backend", "numpy"], ["explain"]):
        p = cli(args, env={"PYTHONIOENCODING": encoding})
        _, err = p.communicate(timeout=120)
        err = err.decode("utf-8", "replace")
        assert p.returncode == 2 and "Traceback" not in err, err
        assert err.count("\n") == 1 and err.startswith("error: the output encoding"), err
        assert "PYTHONIOENCODING=utf-8" in err


def test_an_ascii_output_encoding_does_not_traceback(chinese_run):
    p = cli(["generate", chinese_run, "--prime", "白", "--length", "20", "--backend", "numpy"],
            env={"PYTHONIOENCODING": "ascii:strict"})
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 2) and b"Traceback" not in err, err


@pytest.mark.parametrize("args", [["generate", "{ckpt}", "--length", "200000", "--backend", "numpy"],
                                  ["explain", "--backward", "--format", "html"]])
def test_stdout_closed_early_exits_quietly(chinese_run, args):
    """`| head -c 10`: the reader goes away after 10 bytes; the writer stops without a message."""
    p = cli([a.format(ckpt=chinese_run) for a in args])
    assert len(p.stdout.read(10)) == 10
    p.stdout.close()
    err = p.stderr.read().decode("utf-8", "replace")
    p.wait(timeout=120)
    assert p.returncode in (0, 1), err
    assert "Traceback" not in err and "Exception ignored" not in err and "Error" not in err, err


@pytest.fixture(scope="module")
def state_dir_of_a_module_fixture():
    from lstm_engine import api
    return api.state_dir()


def test_a_module_fixture_trains_with_the_tests_state_dir_not_the_users(state_dir_of_a_module_fixture,
                                                                       tmp_path_factory):
    """Module-scoped fixtures (chinese_run above) run before the per-test isolation: the session's
    keeps their 'last run' pointer out of the user's state directory too."""
    assert state_dir_of_a_module_fixture.startswith(str(tmp_path_factory.getbasetemp()))
