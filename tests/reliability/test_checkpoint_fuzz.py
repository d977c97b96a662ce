"""The checkpoint reader against damaged, foreign and crafted files: always one clean UserError.

Property-based (hypothesis) over truncations, bit flips, random bytes and mutated headers, plus
hand-made hostile files (a pickle inside an .npz, other formats, newer versions, wrong shapes)."""
import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_engine as le
from lstm_engine.storage import checkpoint
from lstm_engine.errors import UserError

from helpers import markov_text, tiny_cfg

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Bytes of a small, valid, resumable checkpoint (1-layer model, 3 steps, one eval in its history)."""
    out = tmp_path_factory.mktemp("good") / "run"
    with pytest.MonkeyPatch.context() as mp:       # module scope: the autouse isolation is not set up yet
        mp.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        le.train(tiny_cfg(out, layers=1, hidden_size=3, embed_size=2, batch_size=2, steps=3, eval_every=3),
                 text=markov_text(200))
    with open(out / "latest.safetensors", "rb") as f:
        return f.read()


def header_of(raw):
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def rebuild(header, data):
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def test_the_good_checkpoint_loads(good):
    tensors, meta = checkpoint.parse(good)
    checkpoint.validate_resumable(tensors, meta)
    assert meta["trainer"]["step"] == 3 and tensors["param.W0"].shape == (3 + 2, 12)


def test_every_truncation_is_refused(good):
    """Cut the file at every byte: each prefix is a clean UserError, none loads."""
    for n in range(len(good)):
        with pytest.raises(UserError):
            checkpoint.parse(good[:n])


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 9), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips_are_refused(good, flips):
    """Any 1-4 flipped bits anywhere (header or data): refused (the digest covers all of it)."""
    raw = bytearray(good)
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    if bytes(raw) == good:          # two flips of the same bit cancel out
        return
    with pytest.raises(UserError):
        checkpoint.parse(bytes(raw))


def test_a_bit_flip_in_every_byte_is_refused(good):
    for pos in range(len(good)):
        raw = bytearray(good)
        raw[pos] ^= 1 << (pos * 5 % 8)
        with pytest.raises(UserError):
            checkpoint.parse(bytes(raw))


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused(data):
    with pytest.raises(UserError):
        checkpoint.parse(data)


@FUZZ
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                         max_leaves=20),
       tail=st.binary(max_size=64))
def test_random_json_headers_are_refused(body, tail):
    h = json.dumps(body).encode()
    with pytest.raises(UserError):
        checkpoint.parse(len(h).to_bytes(8, "little") + h + tail)


@FUZZ
@given(field=st.sampled_from(["dtype", "shape", "data_offsets"]),
       value=st.one_of(st.integers(-2 ** 70, 2 ** 70), st.text(max_size=5),
                       st.lists(st.integers(-2 ** 66, 2 ** 66), max_size=5), st.none(), st.floats()),
       which=st.integers(0, 100))
def test_mutated_tensor_entries_are_refused(good, field, value, which):
    """Change one field of one tensor's header entry to anything: refused, never a crash or a huge allocation."""
    n, header = header_of(good)
    names = sorted(k for k in header if k != "__metadata__")
    entry = header[names[which % len(names)]]
    if entry[field] == value:
        return
    entry[field] = value
    with pytest.raises(UserError):
        checkpoint.parse(rebuild(header, good[8 + n:]))


def test_huge_claimed_shape_is_refused_without_allocating(good):
    n, header = header_of(good)
    header["param.Wy"]["shape"] = [2 ** 40, 2 ** 40]
    with pytest.raises(UserError, match="shape and byte range"):
        checkpoint.parse(rebuild(header, good[8 + n:]))


# -- hand-made hostile files --------------------------------------------------------------------------
class Evil:
    """Unpickling this creates a marker file: proof that code ran on load."""
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def load_file(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(UserError) as e:
        checkpoint.load(str(p))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_pickle_inside_npz_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    Evil.marker = str(marker)
    npz = tmp_path / "evil.npz"
    np.savez(npz, a=np.array([Evil()], dtype=object))
    with pytest.raises(UserError, match="ZIP"):
        checkpoint.load(str(npz))
    assert "ZIP" in load_file(tmp_path, "evil.safetensors", npz.read_bytes())
    assert "pickle" in load_file(tmp_path, "evil.pkl.safetensors", pickle.dumps(Evil()))
    assert not marker.exists()                         # nothing was executed
    with pytest.raises(Exception):                     # (sanity: np.load with pickles would run it)
        np.load(npz, allow_pickle=False)["a"]


def test_a_header_length_that_looks_like_a_pickle_opcode_still_loads(good):
    """Format sniffing must not misread a valid file whose header length starts with byte 0x80."""
    tensors, meta = checkpoint.parse(good)
    for pad in range(0, 400, 1):
        raw = checkpoint.serialize(tensors, dict(meta, pad="x" * pad))
        if raw[0] == 0x80:
            break
    assert raw[0] == 0x80
    assert checkpoint.parse(raw)[1]["pad"] == "x" * pad


def test_other_formats_are_named(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    assert "NumPy .npy" in load_file(tmp_path, "x.safetensors", npy.read_bytes())
    assert "not" in load_file(tmp_path, "t.safetensors", b"hello, this is a text file\n" * 10)
    from safetensors.numpy import save
    foreign = save({"w": np.zeros((2, 2), np.float32)}, metadata={"framework": "other"})
    assert "not written by lstm-engine" in load_file(tmp_path, "f.safetensors", foreign)


def test_missing_empty_directory_and_device(tmp_path):
    for path, needle in ((tmp_path / "nope.safetensors", "does not exist"),
                         (tmp_path, "without checkpoints")):
        with pytest.raises(UserError, match=needle):
            checkpoint.load(str(path))
    assert "empty" in load_file(tmp_path, "e.safetensors", b"")
    if os.path.exists("/dev/zero"):
        with pytest.raises(UserError, match="not a regular file"):
            checkpoint.load("/dev/zero")


def _tensors_meta(good):
    tensors, meta = checkpoint.parse(good)
    return dict(tensors), meta


def test_newer_version_says_upgrade(good, monkeypatch):
    tensors, meta = _tensors_meta(good)
    monkeypatch.setattr(checkpoint, "VERSION", 99)
    raw = checkpoint.serialize(tensors, meta)
    monkeypatch.setattr(checkpoint, "VERSION", 1)
    with pytest.raises(UserError, match="version 99.*upgrade"):
        checkpoint.parse(raw)


@pytest.mark.parametrize("damage, needle", [
    (lambda t, m: t.__setitem__("param.Wy", t["param.Wy"][:, :-1].copy()), "param.Wy has shape"),
    (lambda t, m: t.__setitem__("param.b0", t["param.b0"].astype(np.float64)), "param.b0 has shape"),
    (lambda t, m: t.pop("param.Emb"), "param.Emb is missing"),
    (lambda t, m: t["param.W0"].__setitem__((0, 0), np.nan), "non-finite"),
    (lambda t, m: m["model"].__setitem__("hidden_size", 4), "has shape"),
    (lambda t, m: m["model"].__setitem__("layers", "2"), "model config"),
    (lambda t, m: m.__setitem__("vocab", m["vocab"][:-1]), "model config or vocabulary"),
    (lambda t, m: m.__setitem__("vocab", ["ab"] + m["vocab"][1:]), "model config or vocabulary"),
])
def test_inconsistent_content_is_refused(good, damage, needle):
    """Correct digest, wrong content (as a buggy or malicious writer would make): refused by validation."""
    tensors, meta = _tensors_meta(good)
    damage(tensors, meta)
    with pytest.raises(UserError, match=needle):
        checkpoint.parse(checkpoint.serialize(tensors, meta))


@pytest.mark.parametrize("damage, needle", [
    (lambda t, m: t.pop("adam.v.W0"), "adam.v.W0 is missing"),
    (lambda t, m: t.__setitem__("state.h0", t["state.h0"][:1].copy()), "state.h0 has shape"),
    (lambda t, m: t["adam.m.by"].__setitem__(0, np.inf), "non-finite"),
    (lambda t, m: m.pop("trainer"), "trainer state missing"),
])
def test_not_resumable_is_refused_for_resume(good, damage, needle):
    tensors, meta = _tensors_meta(good)
    damage(tensors, meta)
    t2, m2 = checkpoint.parse(checkpoint.serialize(tensors, meta))      # still fine for eval / generate
    with pytest.raises(UserError, match=needle):
        checkpoint.validate_resumable(t2, m2)


@pytest.mark.parametrize("damage", [
    lambda m: m["trainer"].__setitem__("rng", {"bit_generator": "MT19937"}),
    lambda m: m["trainer"].__setitem__("step", -1),
])
def test_a_malformed_trainer_state_is_refused_on_every_read(good, damage):
    """The metadata schema covers the trainer section: refused when read, for resume and for eval alike."""
    tensors, meta = _tensors_meta(good)
    damage(meta)
    with pytest.raises(UserError, match="trainer state"):
        checkpoint.parse(checkpoint.serialize(tensors, meta))
    with pytest.raises(UserError, match="trainer state"):
        checkpoint.validate_resumable(tensors, meta)
