"""`lstm-engine explore`: the JSON API of a real server on 127.0.0.1 (in this process) against the reference."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import lstm_engine as le
from explore_reference import KINDS, TEXT, explained, influence_fd, params64, pattern_search, serving
from helpers import REPO, assert_one_line_error, run_cli, snapshot
from lstm_engine.backends import numpy_backend as nb
from lstm_engine.core.model import Model, ModelConfig
from lstm_engine.teaching import inspect_cells as ic
from lstm_engine.teaching.explore import compute, page, server


@pytest.fixture(scope="module")
def served(explore_ckpt):
    with serving(explore_ckpt) as srv:
        yield srv


@pytest.fixture(scope="module")
def ref(explore_ckpt):
    """explain's numbers for TEXT, per layer."""
    return [explained(explore_ckpt, TEXT, l) for l in range(2)]


def request(srv, method, path, body=None, headers=None, raw=None):
    """-> (status, parsed JSON answer)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    r = conn.getresponse()
    out = r.read()
    conn.close()
    return r.status, json.loads(out) if out[:1] in (b"{", b"[") else out


def post(srv, path, body):
    status, out = request(srv, "POST", path, body)
    assert status == 200, out
    return out


def test_step_gives_explains_numbers_for_every_layer_and_position(served, ref):
    H = 16
    for t in range(len(TEXT)):
        st = post(served, "/api/step", {"text": TEXT, "t": t})
        assert st["char"] == TEXT[t] and st["next"] == (TEXT[t + 1] if t + 1 < len(TEXT) else None)
        for l, r in enumerate(ref):
            got = st["layers"][l]
            for k in KINDS:
                v = got["gates"][k] if k in "ifgo" else got[k]
                np.testing.assert_allclose(v, r[k][t], rtol=0, atol=1e-12, err_msg=f"{k} layer {l} t {t}")
            z = np.concatenate([got["pre"][g] for g in "ifgo"])
            np.testing.assert_allclose(z, r["z"][t], rtol=0, atol=1e-12)
            np.testing.assert_allclose(got["c_prev"], r["c"][t - 1] if t else np.zeros(H), atol=0)
        logp = ref[1]["logp"][t]                                                        # (V,)
        order = np.argsort(-logp, kind="stable")
        assert [b["char"] for b in st["top"]] == [served.app.explorer.vocab.symbols[i] for i in order[:10]]
        np.testing.assert_allclose([b["p"] for b in st["top"]], np.exp(logp[order[:10]]), rtol=1e-12)
        if t + 1 < len(TEXT):
            y = served.app.explorer.vocab.index[TEXT[t + 1]]
            assert st["loss"] == pytest.approx(-logp[y], rel=1e-12)
        else:
            assert st["loss"] is None


def test_equation_terms_add_up_and_every_placeholder_names_a_value(served):
    st = post(served, "/api/step", {"text": TEXT, "t": 7})
    info = request(served, "GET", "/api/info")[1]
    for ld in st["layers"]:
        g = {k: np.array(v) for k, v in ld["gates"].items()}
        t = {k: np.array(v) for k, v in ld["terms"].items()}
        np.testing.assert_allclose(t["f_c_prev"] + t["i_g"], ld["c"], atol=1e-15)
        np.testing.assert_allclose(g["o"] * t["tanh_c"], ld["h"], atol=1e-15)
        for line in info["equations"]:
            for path in re.findall(r"\{\{([\w.]+)\}\}", line):
                v = ld
                for key in path.split("."):
                    v = v[key]
                assert len(v) == 16, path
    assert sum("{{" in line for line in info["equations"]) == 6     # i, f, g, o, c, h are filled in


def test_activations_and_rank_follow_the_reference(served, ref):
    a = post(served, "/api/activations", {"text": TEXT, "layer": 1, "kind": "c", "units": [0, 5, 15]})
    np.testing.assert_allclose(a["values"], ref[1]["c"][:, [0, 5, 15]], atol=1e-12)
    states = {k: np.stack([ref[l][k] for l in range(2)]) for k in KINDS}            # (L,N,H) from explain
    for feature in ("quotes", "brackets"):
        r = post(served, "/api/rank", {"text": TEXT, "kind": "h", "feature": feature, "top": 5})
        want = ic.rank_units(states, TEXT, feature, "h", None, 5)
        assert [(u["layer"], u["unit"]) for u in r["units"]] == [(l, u) for _, l, u in want]
        np.testing.assert_allclose([u["r"] for u in r["units"]], [x[0] for x in want], atol=1e-9)
    best = post(served, "/api/rank", {"text": TEXT, "kind": "h"})
    assert best["units"] and all(u["feature"] in ic.FEATURES for u in best["units"])


def test_pattern_search_matches_brute_force(served, ref):
    acts = ref[0]["h"]                                                              # (N,H)
    start, end = 3, 7                                                               # '"cd"' ... inside quotes
    thr = float(np.sort(acts[start:end].min(axis=0))[-3]) - 1e-9                    # three units stay above
    r = post(served, "/api/search", {"text": TEXT, "start": start, "end": end, "threshold": thr, "layer": 0})
    units, runs = pattern_search(acts, start, end, thr)
    assert len(units) >= 3 and r["units"] == units
    assert sorted((m["start"], m["end"]) for m in r["matches"]) == sorted(runs)
    assert all(m["text"] == TEXT[m["start"]:m["end"]] for m in r["matches"])
    none = post(served, "/api/search", {"text": TEXT, "start": 0, "end": len(TEXT), "threshold": 0.999, "layer": 0})
    assert none["units"] == [] and "lower the threshold" in none["note"]


@pytest.mark.parametrize("t", [0, 5, len(TEXT) - 2])
def test_influence_is_the_gradient_norm_by_finite_differences(served, explore_ckpt, t):
    r = post(served, "/api/influence", {"text": TEXT, "t": t})
    fd = influence_fd(explore_ckpt, TEXT, t)
    assert len(r["norms"]) == t + 1 and r["target"] == TEXT[t + 1]
    np.testing.assert_allclose(r["norms"], fd, rtol=1e-6, atol=1e-8)
    assert r["norms"][-1] > 0


def test_generate_streams_the_reference_sample(served, explore_ckpt):
    body = {"prime": "ab", "length": 50, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 3}
    host, port = served.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", "/api/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.read().decode().splitlines()]
    conn.close()
    pieces = [m["text"] for m in lines if "text" in m]
    assert len(pieces) == -(-50 // compute.STREAM_CHUNK) and lines[-1] == {"done": True, "chars": 50}
    P, meta = params64(explore_ckpt)
    m = ModelConfig(**meta["model"])
    model = Model(ModelConfig(m.vocab_size, m.embed_size, m.hidden_size, m.layers, 0.0, "float64"), nb, P)
    want = le.generate(model, le.Vocab(meta["vocab"]), prime="ab", length=50, temperature=0.7, top_k=5, top_p=0.9,
                       seed=3)
    assert "".join(pieces) == want


BAD = [
    ("/api/run", {"text": TEXT + "\u20ac"}, 400, "not in the model's vocabulary"),
    ("/api/run", {"text": "a" * (compute.MAX_CHARS + 1)}, 400, "shorten it"),
    ("/api/run", {"text": ""}, 400, "type some text"),
    ("/api/step", {"text": TEXT, "t": len(TEXT)}, 400, "t must be in 0..25"),
    ("/api/step", {"text": TEXT, "t": "3"}, 400, "t must be an integer"),
    ("/api/step", {"text": TEXT}, 400, "needs 't'"),
    ("/api/activations", {"text": TEXT, "layer": 2}, 400, "layer must be in 0..1"),
    ("/api/activations", {"text": TEXT, "layer": 0, "units": [16]}, 400, "unit must be in 0..15"),
    ("/api/activations", {"text": TEXT, "layer": 0, "kind": "q"}, 400, "kind must be one of"),
    ("/api/rank", {"text": TEXT, "feature": "nonsense"}, 400, "unknown feature"),
    ("/api/rank", {"text": "aaaa", "feature": "quotes"}, 400, "never changes"),
    ("/api/search", {"text": TEXT, "start": 5, "end": 5, "threshold": 0.5, "layer": 0}, 400, "select at least one"),
    ("/api/influence", {"text": TEXT, "t": len(TEXT) - 1}, 400, "move the cursor before the last"),
    ("/api/generate", {"prime": "\u20ac"}, 400, "not in the model's vocabulary"),
    ("/api/generate", {"temperature": 0}, 400, "temperature must be"),
    ("/api/generate", {"length": compute.MAX_GENERATE + 1}, 400, "length must be in"),
    ("/api/generate", {"top_k": 0}, 400, "top_k must be >= 1"),
    ("/api/load", {"checkpoint": "missing.safetensors"}, 400, "does not exist"),
    ("/api/nothing", {}, 404, "no API"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD, ids=[f"{p}-{n[:20]}" for p, _, _, n in BAD])
def test_bad_input_answers_one_message_and_the_server_keeps_going(served, explore_ckpt, tmp_path, monkeypatch,
                                                                  path, body, status, needle):
    monkeypatch.chdir(tmp_path)
    before = snapshot(os.path.dirname(explore_ckpt)), snapshot(tmp_path)
    got, out = request(served, "POST", path, body)
    assert got == status and needle in out["error"], out
    assert "\n" not in out["error"] and "Traceback" not in out["error"]
    assert (snapshot(os.path.dirname(explore_ckpt)), snapshot(tmp_path)) == before      # nothing written
    assert post(served, "/api/step", {"text": TEXT, "t": 1})["char"] == TEXT[1]          # still serving
    assert served.checkpoint == explore_ckpt


def test_malformed_requests(served, explore_ckpt, tmp_path):
    assert request(served, "POST", "/api/run", raw=b"{not json")[0] == 400
    assert request(served, "POST", "/api/run", raw=b"[1, 2]")[0] == 400
    big = json.dumps({"text": "a" * (server.MAX_BODY + 10)}).encode()
    status, out = request(served, "POST", "/api/run", raw=big)
    assert status == 413 and "send a shorter text" in out["error"]
    status, out = request(served, "POST", "/api/run", raw=b'{"text": "ab"}', headers={"Content-Type": "text/plain"})
    assert status == 415                                      # a form post from another site cannot reach the API
    status, out = request(served, "GET", "/api/info", headers={"Host": "evil.example:80"})
    assert status == 403                                      # nor a page that rebinds its name to 127.0.0.1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    status, out = request(served, "POST", "/api/load", {"checkpoint": str(bad)})
    assert status == 400 and "not a usable lstm-engine checkpoint" in out["error"]
    assert request(served, "GET", "/api/info")[1]["checkpoint"] == explore_ckpt        # the old model stays


def test_page_and_assets_are_served_locally(served):
    for path, ctype in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        host, port = served.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode()
        conn.close()
        assert r.status == 200 and r.getheader("Content-Type").startswith(ctype)
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", body) and "@import" not in body   # no CDN
    assert request(served, "GET", "/nothing")[0] == 404


def test_saved_page_holds_the_same_numbers(explore_ckpt, tmp_path):
    out = tmp_path / "page.html"
    before = snapshot(os.path.dirname(explore_ckpt))
    r = run_cli(["explore", explore_ckpt, "--html", out, "--text", TEXT])
    assert r.exit_code == 0, r.output
    html = out.read_text(encoding="utf-8")
    blob = re.search(r"window\.EXPLORER_BAKED = (\{.*?\});</script>", html, re.S).group(1)
    data = json.loads(blob.replace("<\\/", "</"))
    ex = compute.Explorer(explore_ckpt)
    for t in (0, 9, len(TEXT) - 1):
        want = ex.step(TEXT, t)["layers"][1]["gates"]["f"]
        np.testing.assert_allclose(data["steps"][t]["layers"][1]["gates"]["f"], want, rtol=1e-5)
    np.testing.assert_allclose(data["influence"][5]["norms"], ex.influence(TEXT, 5)["norms"], rtol=1e-5)
    assert "static/app.js" not in html and not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert snapshot(os.path.dirname(explore_ckpt)) == before


def test_cli_bad_input_is_one_line(explore_ckpt, tmp_path):
    out = tmp_path / "page.html"
    assert_one_line_error(run_cli(["explore", tmp_path / "missing.safetensors"]), "does not exist")
    assert_one_line_error(run_cli(["explore", explore_ckpt, "--text", "ab"]), "--text goes with --html")
    assert_one_line_error(run_cli(["explore", explore_ckpt, "--html", out]), "--html needs --text")
    assert_one_line_error(run_cli(["explore", explore_ckpt, "--html", out, "--text", "a" * (page.MAX_HTML_CHARS + 1)]),
                          "2 to 200 characters")
    assert_one_line_error(run_cli(["explore", explore_ckpt, "--port", "70000"]), "--port must be in")
    assert not out.exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        assert_one_line_error(run_cli(["explore", explore_ckpt, "--port", busy]), "in use")


def test_only_loopback_addresses_go_without_a_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert server.host_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        assert "anyone who can reach this machine" in server.host_warning(host)


def test_the_command_prints_its_url_serves_and_stops_on_ctrl_c(explore_ckpt):
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "lstm_engine.cli", "explore", explore_ckpt], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        url = p.stdout.readline().strip()
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", url)
        assert m, url
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        conn.close()
        assert info["checkpoint"] == explore_ckpt and info["layers"] == 2 and info["gates"] == ["i", "f", "g", "o"]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "stopped" in err and "Traceback" not in err, err


def test_the_command_warns_off_the_loopback_and_defaults_to_the_last_run(explore_ckpt, monkeypatch):
    class Unbound:                       # stands in for the server: no socket is opened off the loopback
        url, checkpoint, closed = "http://0.0.0.0:8765/", explore_ckpt, False

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            self.closed = True
    fake, asked = Unbound(), []
    monkeypatch.setattr(server, "start", lambda path, host, port: asked.append((path, host, port)) or fake)
    assert_one_line_error(run_cli(["explore"]), "no previous run found")
    le.api.remember_last_run(os.path.dirname(explore_ckpt))
    r = run_cli(["explore", "--host", "0.0.0.0", "--port", "8765"])
    assert r.exit_code == 0 and fake.closed and asked == [(explore_ckpt, "0.0.0.0", 8765)]
    lines = r.stderr.splitlines()
    assert lines[0].startswith("warning: --host 0.0.0.0: anyone who can reach this machine")
    assert lines[1] == f"using {explore_ckpt}" and lines[-1] == "stopped"
    assert r.stdout == "http://0.0.0.0:8765/\n"
