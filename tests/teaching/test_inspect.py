"""`lstm-engine inspect`: a really trained model must grow a unit that tracks "inside brackets"."""
import random
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine.teaching import inspect_cells as ic
from lstm_engine.backends import numpy_backend as nb
from lstm_engine.cli import main
from lstm_engine.core.model import Model

THRESHOLD = 0.75     # |r| of the best unit with "inside brackets" after training (measured 0.89-0.93, seeds 0-2)
UNTRAINED_MAX = 0.6  # a freshly initialised model of the same size (measured 0.27-0.35)


def bracket_corpus(n, seed):
    """Letters a-d with nested ( ) up to depth 3 and newlines only outside brackets.

    Inside and outside use the same letters, so telling them apart needs memory: ')' can only
    come inside, a newline only outside.
    """
    rng = random.Random(seed)
    out, depth = [], 0
    while len(out) < n:
        r = rng.random()
        if depth < 3 and r < 0.10:
            out.append("(")
            depth += 1
        elif depth > 0 and r < 0.22:
            out.append(")")
            depth -= 1
        elif depth == 0 and r < 0.26:
            out.append("\n")
        else:
            out.append(rng.choice("abcd"))
    return "".join(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "run"
    cfg = le.TrainConfig(backend="numpy", embed_size=8, hidden_size=16, layers=1, batch_size=16, seq_len=32,
                         steps=300, lr=1e-2, eval_every=0, sample_every=0, save_every=0, log_every=0, seed=0,
                         out=str(out))
    trainer = le.Trainer(cfg, text=bracket_corpus(20000, 1))
    trainer.run()
    return str(out / "latest.safetensors")


def test_features_are_the_state_after_each_character():
    text = 'a(b[c]d)e "f(g" h\nij'
    inside = ic.feature_values(text, "brackets")
    assert "".join(ch for ch, v in zip(text, inside) if v) == "(b[c]d(g\" h\nij"
    assert list(ic.feature_values("(()) ", "depth")) == [1, 2, 1, 0, 0]
    assert "".join(ch for ch, v in zip(text, ic.feature_values(text, "quotes")) if v) == '"f(g'
    assert list(ic.feature_values("ab\ncd", "line-pos")) == [0, 1, 2, 0, 1]
    assert list(ic.feature_values("ab\ncd", "after-newline")) == [1, 0, 0, 1, 0]
    assert list(ic.feature_values("aB1 ,", "upper")) == [0, 1, 0, 0, 0]
    assert list(ic.feature_values("xax", "char:a")) == [0, 1, 0]
    with pytest.raises(le.UserError, match="unknown feature"):
        ic.feature_values("abc", "nonsense")


def test_correlations_are_pearson():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((2, 50, 3))
    f = rng.standard_normal(50)
    r = ic.correlations(acts, f)
    for l in range(2):
        for u in range(3):
            assert r[l, u] == pytest.approx(np.corrcoef(acts[l, :, u], f)[0, 1], abs=1e-12)
    acts[0, :, 1] = 3.0                      # a constant unit correlates with nothing
    assert ic.correlations(acts, f)[0, 1] == 0


def test_trained_model_has_a_bracket_unit_and_an_untrained_one_does_not(trained, tmp_path):
    model, vocab, _ = le.load_model(trained, "numpy")
    text = bracket_corpus(3000, 7)           # text the model never saw
    res = ic.inspect(model, vocab, text, str(tmp_path / "p.html"), rank="brackets", top=5)
    best_r, layer, unit = res["ranking"][0]
    assert abs(best_r) > THRESHOLD
    f = ic.feature_values(text, "brackets")
    h = res["states"]["h"][layer, :, unit]
    assert abs(np.corrcoef(h, f)[0, 1]) == pytest.approx(abs(best_r), abs=1e-6)
    fresh = Model(model.cfg, nb, seed=5)
    r0 = ic.inspect(fresh, vocab, text, str(tmp_path / "q.html"), rank="brackets", top=1)["ranking"][0][0]
    assert abs(r0) < UNTRAINED_MAX


def test_states_are_the_model_states(trained):
    """h and c collected chunk by chunk equal a single Model.forward over the whole text."""
    model, vocab, _ = le.load_model(trained, "numpy")
    text = bracket_corpus(600, 3)
    states = ic.collect_states(model, vocab, text, chunk=97)
    ids = vocab.encode(text).reshape(-1, 1)
    _, state, _ = model.forward(ids, model.zero_state(1))
    hT, cT = state[0]
    np.testing.assert_allclose(states["h"][0, -1], hT[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states["c"][0, -1], cT[0], rtol=1e-5, atol=1e-6)
    assert ((states["f"] > 0) & (states["f"] < 1)).all()


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self.h2 = [], []
        self._tag = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "span" and dict(attrs).get("title"):
            self.spans.append(dict(attrs)["title"])

    def handle_data(self, data):
        if self._tag == "h2":
            self.h2.append(data)


def test_cli_rank_writes_a_valid_page(trained, tmp_path):
    text_file = tmp_path / "t.txt"
    text = bracket_corpus(1500, 11)
    text_file.write_text(text, encoding="utf-8")
    out = tmp_path / "rank.html"
    r = CliRunner().invoke(main, ["inspect", trained, "--text", str(text_file), "--rank", "brackets",
                                  "--top", "3", "--html", str(out)])
    assert r.exit_code == 0, r.output
    assert "#1  layer 0" in r.output
    best = float(r.output.split("r = ")[1].split()[0])
    assert abs(best) > THRESHOLD
    page = out.read_text(encoding="utf-8")
    ET.fromstring(page.split("\n", 1)[1])    # well-formed XHTML
    p = _Collect()
    p.feed(page)
    assert len(p.spans) == 3 * len(text)     # three units, every character coloured once each
    assert len(p.h2) == 3 and "inside" in p.h2[0]


def test_cli_unit_and_default_pages(trained, tmp_path):
    out = tmp_path / "u.html"
    r = CliRunner().invoke(main, ["inspect", trained, "--prime", "ab(cd)\nab", "--unit", "3", "--state", "c",
                                  "--html", str(out)])
    assert r.exit_code == 0, r.output
    p = _Collect()
    p.feed(out.read_text(encoding="utf-8"))
    assert len(p.spans) == 9 and p.spans[0].startswith("c=") and "layer 0 unit 3 (c)" in p.h2[0]
    out = tmp_path / "d.html"
    r = CliRunner().invoke(main, ["inspect", trained, "--prime", bracket_corpus(800, 5), "--html", str(out)])
    assert r.exit_code == 0, r.output
    assert "bracket" in r.output            # the default page lists the best unit per feature


@pytest.mark.parametrize("args, msg", [
    (["--prime", "ab(c)", "--rank", "nope"], "unknown feature"),
    (["--prime", "abcd", "--rank", "brackets"], "never changes"),
    (["--prime", "ab(c)", "--unit", "99"], "--unit must be in 0..15"),
    (["--prime", "ab(c)", "--layer", "1"], "--layer must be in 0..0"),
    ([], "exactly one of --text FILE or --prime TEXT"),
    (["--text", "/nonexistent/file.txt"], "does not exist"),
])
def test_cli_bad_input_is_one_line(trained, tmp_path, args, msg):
    r = CliRunner().invoke(main, ["inspect", trained, *args, "--html", str(tmp_path / "x.html")])
    assert r.exit_code == 2, r.output
    assert msg in r.output and r.output.strip().count("\n") == 0
