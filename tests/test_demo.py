"""The Gradio demo end to end through gradio_client: generate, re-render from a seed, bad input."""

from __future__ import annotations

import socket

import pytest

from ponder.errors import ConfigError

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # gradio's own use of pandas 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url():
    from ponder.demos.app import launch

    app = launch(port=free_port(), block=False)
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def test_demo_binds_loopback_and_has_a_tab_per_modality(demo_url, client):
    from ponder import api

    assert demo_url.startswith("http://127.0.0.1:")
    endpoints = client.view_api(return_format="dict")["named_endpoints"]
    for modality in api.MODALITIES:
        assert f"/generate_{modality}" in endpoints and f"/rerender_{modality}" in endpoints


def test_generate_shows_best_candidates_compute_and_scaling_then_rerenders_a_candidate(client):
    best, compute, table, gallery, plot = client.predict(
        "zoo:arith", "Q: 58+36-7*2\n", "best-of-n", "exact", "plain", 4, 0, 1.0, 40, "",
        api_name="/generate_text")
    rows = table["data"]
    assert table["headers"] == ["#", "seed", "score", "output"] and len(rows) == 4
    assert [r[0] for r in rows] == [0, 1, 2, 3] and all(r[2] in (0.0, 1.0) for r in rows)
    top = max(rows, key=lambda r: r[2])
    assert best == top[3] and best.startswith("7*2=14")
    assert "model calls" in compute and "verifier calls 4" in compute
    # best score among the first N candidates never falls as N grows
    curve = [score for _, score in plot["data"]]
    assert [n for n, _ in plot["data"]] == [1, 2, 3, 4] and curve == sorted(curve) and curve[-1] == top[2]
    output, info = client.predict(2, api_name="/rerender_text")
    assert output == rows[2][3]
    assert "decoded alone from seed" in info and "identical to the original: yes" in info


@pytest.mark.parametrize("model, n, options, message", [
    ("zoo:nope", 2, "", "unknown zoo name"),
    ("zoo:arith", 2, "{beam_width: 2}", "does not take option"),
    ("zoo:arith", 2, "[not, a, mapping]", "options must be a mapping"),
    ("zoo:arith", 2.5, "", "n must be a whole number"),
])
def test_bad_input_is_a_gradio_error_with_ponders_message_not_a_traceback(client, model, n, options, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(model, "Q: 1+2\n", "best-of-n", "exact", "plain", n, 0, 1.0, 8, options,
                       api_name="/generate_text")
    assert message in str(info.value) and "Traceback" not in str(info.value)


def test_rerender_of_a_step_strategy_reruns_the_search():
    from ponder.demos.app import DemoSession

    session = DemoSession()
    payload = session.generate("text", "zoo:arith", "Q: 12+7*3\n", "beam", "prm", "plain", 2, 3, 1.0, 24,
                               {"beam_width": 2})
    payload.pop("result")
    output, info = session.rerender(payload, 1)
    assert output == payload["candidates"][1]["output"]
    assert "re-ran the whole beam search" in info and "identical to the original: yes" in info
    with pytest.raises(ConfigError, match="row number from 0 to 1"):
        session.rerender(payload, 5)


def test_a_new_modality_gets_its_own_tab_without_touching_the_app(monkeypatch):
    from ponder import api
    from ponder.demos.app import build_app

    monkeypatch.setattr(api, "MODALITIES", ("text", "toy"))
    app = build_app()
    config = app.get_config_file()
    tabs = [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert tabs == ["Text", "Toy"]
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"generate_text", "generate_toy", "rerender_toy"} <= names
