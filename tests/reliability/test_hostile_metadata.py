"""Crafted checkpoint metadata with a valid digest, through every command that reads a checkpoint.

The digest is no defence (anyone can recompute it), so the metadata schema (storage/schema.py) is.
Each command either works or ends with one line on stderr, exit 2 and no traceback: hand-picked
fields that crashed readers before, then hypothesis over every field of the metadata."""
import copy
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_engine as le
from lstm_engine.errors import UserError
from lstm_engine.storage import checkpoint, interop, schema

from helpers import assert_one_line_error, markov_text, run_cli, tiny_cfg
from hostile_helpers import craft

DELETE = object()
COMMANDS = ("generate", "eval", "eval-val", "resume", "explain", "inspect", "plot", "export")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(tensors, meta, corpus path) of a small resumable checkpoint with an evaluation in its history."""
    d = tmp_path_factory.mktemp("meta")
    corpus = d / "corpus.txt"
    corpus.write_text(markov_text(300), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSTM_ENGINE_STATE_DIR", str(d / "state"))
        le.train(tiny_cfg(d / "run", layers=1, hidden_size=4, embed_size=3, batch_size=2, steps=2, eval_every=2,
                          corpus=str(corpus)))
    tensors, meta = checkpoint.load(str(d / "run"))
    return tensors, meta, str(corpus)


def mutated(meta, path, value):
    meta = copy.deepcopy(meta)
    *parents, last = path
    node = meta
    for k in parents:
        node = node[k]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    else:
        node[last] = value
    return meta


def args_of(command, d, corpus):
    ck = os.path.join(d, "latest.safetensors")
    return {"generate": ["generate", ck, "--length", "3", "--seed", "1", "--backend", "numpy"],
            "eval": ["eval", ck, "--corpus", corpus, "--backend", "numpy"],
            "eval-val": ["eval", ck, "--backend", "numpy"],
            "resume": ["train", "--resume", ck, "--steps", "3", "--out", os.path.join(d, "resumed"),
                       "--backend", "numpy"],
            "explain": ["explain", "--checkpoint", ck, "--text", "ax"],
            "inspect": ["inspect", ck, "--prime", "ax.ay.", "--html", os.path.join(d, "page.html")],
            "plot": ["plot", d, "-o", os.path.join(d, "loss.png")],
            "export": ["export", ck, "-o", os.path.join(d, "sd.safetensors")]}[command]


def run_crafted(good, meta, command):
    """Write the crafted checkpoint, run the command on it -> the click result (works or one clean line)."""
    tensors, _, corpus = good
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "latest.safetensors"), "wb") as f:
            f.write(craft(tensors, meta))
        r = run_cli(args_of(command, d, corpus))
    if r.exit_code != 0:
        assert_one_line_error(r)
    return r


# -- fields that crashed a reader: the schema refuses them, every command gives one line -------------
CRASHERS = [
    (("train",), 5, "section train"),
    (("train",), DELETE, "required section train"),
    (("train", "corpus"), 5, "train.corpus"),
    (("train", "val_fraction"), "x", "train.val_fraction"),
    (("train", "seq_len"), "8", "train.seq_len"),
    (("train", "encoding"), "rot13", "train.encoding"),
    (("trainer",), [], "section trainer"),
    (("trainer", "history"), [{"step": [1], "val_loss": 1.0}], "trainer.history[0].step"),
    (("trainer", "history"), [1], "trainer.history[0]"),
    (("trainer", "elapsed"), float("inf"), "trainer.elapsed"),
    (("unigram_entropy",), "x", "unigram_entropy"),
    (("corpus",), 5, "section corpus"),
    (("vocab", 0), "\ud800", "lone surrogate"),
    (("model", "dropout"), float("nan"), "model.dropout"),
    (("model", "hidden_size"), 2 ** 40, "model.hidden_size"),
]


@pytest.mark.parametrize("path, value, needle", CRASHERS, ids=[f"{'.'.join(map(str, p))}" for p, _, _ in CRASHERS])
def test_crafted_field_is_refused_by_every_command(good, path, value, needle):
    meta = mutated(good[1], path, value)
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        checkpoint.parse(craft(good[0], meta))
    for command in COMMANDS:
        r = run_crafted(good, meta, command)
        assert r.exit_code == 2, (command, r.output)
        assert needle.split("[")[0] in r.stderr, (command, r.stderr)


def test_the_good_checkpoint_works_in_every_command(good):
    """The harness itself: the unmodified metadata passes every command (so refusals above are real)."""
    for command in COMMANDS:
        r = run_crafted(good, good[1], command)
        assert r.exit_code == 0, (command, r.output)


def test_a_history_row_without_its_time_plots(good):
    """The schema lets a history row's time be null (a run that did not record it): plot leaves
    that row off the time panel instead of failing."""
    pytest.importorskip("matplotlib")
    r = run_crafted(good, mutated(good[1], ("trainer", "history", 0, "time"), None), "plot")
    assert r.exit_code == 0, r.output


def test_vocabulary_checks_are_linear_and_name_the_entry():
    assert schema.vocab_problem(["a", "b", "<unk>"]) is None
    assert "appears twice" in schema.vocab_problem(["a", "b", "a"])
    assert "lone surrogate" in schema.vocab_problem(["a", "\udfff"])
    assert "single character" in schema.vocab_problem(["a", "ab"])
    assert "not a list" in schema.vocab_problem("ab")


# -- hypothesis: any field replaced or removed --------------------------------------------------------
def leaf_paths(meta):
    """Every key path into the metadata (sections, their fields, first and last vocabulary entries,
    the fields of the first history row and of the RNG state)."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list) and node:
            for i in sorted({0, len(node) - 1}):
                paths.append(path + (i,))
                walk(node[i], path + (i,))
    walk(meta, ())
    return [p for p in paths if p[0] not in ("format", "version")]


HOSTILE = st.one_of(
    st.just(DELETE), st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
    st.sampled_from([0, -1, 1, 2, 2 ** 31, 2 ** 63, 2 ** 64]), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.sampled_from(["\ud800", "<unk>", "", "utf-16", "rot13", "numba", "x" * 70]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2), st.none()), max_size=3),
    st.dictionaries(st.sampled_from(["step", "val_loss", "chars", "x"]), st.integers(-2, 2) | st.floats(), max_size=2))
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.mark.parametrize("command", COMMANDS)
@FUZZ
@given(data=st.data())
def test_any_crafted_field_gives_a_result_or_one_line(good, command, data):
    path = data.draw(st.sampled_from(leaf_paths(good[1])), label="path")
    value = data.draw(HOSTILE, label="value")
    run_crafted(good, mutated(good[1], path, value), command)



def test_resume_without_a_best_val_starts_with_no_best(good):
    """trainer.best_val may be absent as it may be null (schema.check_trainer): resuming reads it so
    and trains, with no traceback."""
    r = run_crafted(good, mutated(good[1], ("trainer", "best_val"), DELETE), "resume")
    assert r.exit_code == 0, r.output

def test_an_imported_vocabulary_is_checked_by_the_same_rules(tmp_path, good):
    """import --vocab: a lone surrogate or a duplicate is refused naming the entry."""
    tensors, meta, _ = good
    params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    sd = tmp_path / "sd.safetensors"
    interop.write_state_dict(str(sd), interop.to_state_dict(params, meta["model"]["layers"]))
    for bad, needle in ((["\ud800"] + meta["vocab"][1:], "lone surrogate"),
                        (meta["vocab"][:-1] + meta["vocab"][:1], "appears twice")):
        v = tmp_path / "v.json"
        v.write_text("[" + ", ".join('"\\u%04x"' % ord(s) if len(s) == 1 else '"<unk>"' for s in bad) + "]")
        assert_one_line_error(run_cli(["import", sd, "--vocab", v, "-o", tmp_path / "imp.safetensors"]), needle)
        assert not (tmp_path / "imp.safetensors").exists()
