"""`lstm-engine explore` serving a peephole, coupled or gru checkpoint: the JSON API against explain's numbers,
torch.nn.GRU and central differences; the page draws the gates the server lists (a GRU: r, z, n and h, no c)."""
import http.client
import json
import re

import numpy as np
import pytest

from cell_oracle import nn_gru_hidden
from explore_reference import explained_cell, influence_fd, params64, serving
from lstm_engine.core.model import CELLS
from lstm_engine.teaching import explain as ex
from lstm_engine.teaching.explore import page
from test_explore_api import post, request
from test_explore_browser import browser, cell_values, page_of, read   # noqa: F401 (fixtures)

TEXT = 'ab "cd" (a (b) c)\nd'
VARIANTS = [c for c in CELLS if c != "lstm"]
GATES = {"peephole": ["i", "f", "g", "o"], "coupled": ["f", "g", "o"], "gru": ["r", "z", "n"]}


@pytest.fixture(scope="module", params=VARIANTS)
def served_cell(request, cell_ckpt):
    path = cell_ckpt(request.param)
    with serving(path) as srv:
        yield request.param, path, srv


def test_info_lists_the_cells_gates_states_and_equations(served_cell):
    cell, _, srv = served_cell
    info = request(srv, "GET", "/api/info")[1]
    assert info["cell"] == cell and info["gates"] == GATES[cell] and info["model"]["cell"] == cell
    assert info["kinds"] == (["h"] if cell == "gru" else ["h", "c"]) + GATES[cell]
    st = post(srv, "/api/step", {"text": TEXT, "t": 4})
    for ld in st["layers"]:                       # every placeholder of the equations names a value of H numbers
        for line in info["equations"]:
            for path in re.findall(r"\{\{([\w.]+)\}\}", line):
                v = ld
                for key in path.split("."):
                    v = v[key]
                assert len(v) == 16, path
    assert set(st["layers"][0]["gates"]) == set(GATES[cell])
    assert ("c" in st["layers"][0]) == (cell != "gru")


def test_step_gives_explains_numbers_for_every_layer_and_position(served_cell):
    cell, path, srv = served_cell
    ref = [explained_cell(path, TEXT, l) for l in range(2)]
    P, H = params64(path)[0], 16
    for t in range(len(TEXT)):
        st = post(srv, "/api/step", {"text": TEXT, "t": t})
        for l, r in enumerate(ref):
            got = st["layers"][l]
            for g in GATES[cell]:
                np.testing.assert_allclose(got["gates"][g], r[g][t], rtol=0, atol=1e-12, err_msg=f"{g} {l} {t}")
            np.testing.assert_allclose(got["h"], r["h"][t], rtol=0, atol=1e-12)
            np.testing.assert_allclose(np.concatenate([got["pre"][g] for g in GATES[cell]]), r["pre"][t], atol=1e-12)
            terms = {k: np.array(v) for k, v in got["terms"].items()}
            gates = {k: np.array(v) for k, v in got["gates"].items()}
            if cell == "gru":
                np.testing.assert_allclose(terms["h_n"], r["hn"][t], atol=1e-12)
                np.testing.assert_allclose(terms["x_n"] + gates["r"] * terms["h_n"], got["pre"]["n"], atol=1e-15)
                np.testing.assert_allclose(terms["one_minus_z_n"] + terms["z_h_prev"], got["h"], atol=1e-15)
                np.testing.assert_allclose(got["h_prev"], r["h"][t - 1] if t else np.zeros(H), atol=0)
            else:
                np.testing.assert_allclose(got["c"], r["c"][t], atol=1e-12)
                write = terms["one_minus_f_g"] if cell == "coupled" else terms["i_g"]
                np.testing.assert_allclose(terms["f_c_prev"] + write, got["c"], atol=1e-15)
            if cell == "peephole":                # the peephole terms the equations show
                wc = P[f"wc{l}"]
                np.testing.assert_allclose(terms["wco_c"], wc[2] * np.array(got["c"]), atol=1e-15)
                np.testing.assert_allclose(terms["wci_c_prev"], wc[0] * np.array(got["c_prev"]), atol=1e-15)
                np.testing.assert_allclose(terms["wcf_c_prev"], wc[1] * np.array(got["c_prev"]), atol=1e-15)
        np.testing.assert_allclose([b["p"] for b in st["top"]], np.sort(np.exp(ref[1]["logp"][t]))[::-1][:10],
                                   rtol=1e-12)


def test_gru_layer_0_is_torch_nn_gru(cell_ckpt):
    path = cell_ckpt("gru")
    want = nn_gru_hidden(ex.checkpoint_setup(path, TEXT + "a", 0))               # (N,H)
    with serving(path) as srv:
        got = [post(srv, "/api/step", {"text": TEXT, "t": t})["layers"][0]["h"] for t in range(len(TEXT))]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_states_rank_and_influence(served_cell):
    cell, path, srv = served_cell
    kinds = request(srv, "GET", "/api/info")[1]["kinds"]
    ref = explained_cell(path, TEXT, 1)
    for kind in kinds:
        a = post(srv, "/api/activations", {"text": TEXT, "layer": 1, "kind": kind, "units": [0, 15]})
        np.testing.assert_allclose(a["values"], ref[kind][:, [0, 15]], atol=1e-12)
    assert post(srv, "/api/rank", {"text": TEXT, "kind": kinds[-1], "feature": "brackets", "top": 3})["units"]
    missing = "c" if cell == "gru" else "r"
    status, out = request(srv, "POST", "/api/activations", {"text": TEXT, "layer": 0, "kind": missing})
    assert status == 400 and f"kind must be one of {', '.join(kinds)}" in out["error"]
    r = post(srv, "/api/influence", {"text": TEXT, "t": 6})
    np.testing.assert_allclose(r["norms"], influence_fd(path, TEXT, 6), rtol=1e-6, atol=1e-8)


def test_saved_page_bakes_the_cells_states(served_cell, tmp_path):
    cell, path, _ = served_cell
    out = tmp_path / "p.html"
    page.write_page(path, str(out), TEXT)
    html = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r"window\.EXPLORER_BAKED = (\{.*?\});</script>", html, re.S).group(1)
                      .replace("<\\/", "</"))
    assert data["info"]["gates"] == GATES[cell]
    assert {k.split("/")[0] for k in data["rank"]} == set(data["info"]["kinds"])


def test_the_page_draws_the_gates_the_server_lists(served_cell, page_of):
    cell, _, srv = served_cell
    pg = page_of(srv.url)
    read(pg, TEXT)
    pg.keyboard.press("ArrowRight")
    pg.wait_for_function("document.getElementById('pos').textContent.startsWith('position 1 ')")
    drawn = pg.eval_on_selector_all(".cell[data-layer='1']", "els => [...new Set(els.map(e => e.dataset.kind))]")
    info = request(srv, "GET", "/api/info")[1]
    assert drawn == info["gates"] + (["h"] if cell == "gru" else ["c", "h"])
    st = post(srv, "/api/step", {"text": TEXT, "t": 1})
    for kind in drawn:
        want = st["layers"][1]["gates"][kind] if kind in info["gates"] else st["layers"][1][kind]
        np.testing.assert_allclose(cell_values(pg, 1, kind), want, rtol=1e-12)
    pg.click(".cell[data-layer='0'][data-kind='h'][data-unit='3']")
    eqs = pg.inner_text("#equations")
    assert "{{" not in eqs and ("n_t = tanh(" in eqs if cell == "gru" else "c_t = f_t" in eqs)


def test_greedy_sample_follows_the_forward_pass(served_cell):
    """The streamed sample (the reference generate, one step at a time) against the forward pass over the text:
    greedy sampling must pick each step's most likely next character that /api/step reports."""
    cell, _, srv = served_cell
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", "/api/generate", body=json.dumps({"prime": "ab", "length": 12, "greedy": True}),
                 headers={"Content-Type": "application/json"})
    lines = [json.loads(line) for line in conn.getresponse().read().decode().splitlines()]
    conn.close()
    sample = "".join(m["text"] for m in lines if "text" in m)
    assert len(sample) == 12 and lines[-1] == {"done": True, "chars": 12}
    text = "ab" + sample
    for t in range(1, len(text) - 1):
        assert post(srv, "/api/step", {"text": text, "t": t})["top"][0]["char"] == text[t + 1], (cell, t)
