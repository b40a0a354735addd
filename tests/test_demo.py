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
    from ponder.modalities import registry

    assert demo_url.startswith("http://127.0.0.1:")
    endpoints = client.view_api(return_format="dict")["named_endpoints"]
    for modality in registry.names():
        assert {f"/generate_{modality}", f"/rerender_{modality}", f"/model_{modality}"} <= set(endpoints)


def test_the_controls_follow_the_loaded_model(client):
    decoder, temperature, max_new, steps, info = client.predict("zoo:digits", api_name="/model_image")
    assert not temperature["visible"] and not max_new["visible"] and steps["visible"] and "diffusion" in info
    decoder, temperature, max_new, steps, info = client.predict("zoo:arith", api_name="/model_text")
    assert temperature["visible"] and max_new["visible"] and not steps["visible"] and "sequence model" in info


def test_generate_shows_best_candidates_compute_and_scaling_then_rerenders_a_candidate(client):
    best, image, audio, compute, table, gallery, players, plot, history = client.predict(
        "zoo:arith", "Q: 58+36-7*2\n", "best-of-n", "exact", "plain", 4, 0, 1.0, 40, 0, "",
        api_name="/generate_text")
    assert best["visible"] and not image["visible"] and not audio["visible"] and not history["visible"]
    best = best["value"]
    rows = table["data"]
    assert table["headers"] == ["#", "seed", "score", "output"] and len(rows) == 4
    assert [r[0] for r in rows] == [0, 1, 2, 3] and all(r[2] in (0.0, 1.0) for r in rows)
    top = max(rows, key=lambda r: r[2])
    assert best == top[3] and best.startswith("7*2=14")
    assert "model calls" in compute and "verifier calls 4" in compute
    # best score among the first N candidates never falls as N grows
    curve = [score for _, score in plot["data"]]
    assert [n for n, _ in plot["data"]] == [1, 2, 3, 4] and curve == sorted(curve) and curve[-1] == top[2]
    output, image, audio, info = client.predict(2, api_name="/rerender_text")
    assert not image["visible"]
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
        client.predict(model, "Q: 1+2\n", "best-of-n", "exact", "plain", n, 0, 1.0, 8, 0, options,
                       api_name="/generate_text")
    assert message in str(info.value) and "Traceback" not in str(info.value)


def test_rerender_of_a_step_strategy_reruns_the_search():
    from ponder.demos.app import DemoSession, checked_request

    session = DemoSession()
    payload = session.generate(checked_request("text", "zoo:arith", "Q: 12+7*3\n", "beam", "prm", "plain", 2, 3,
                                               1.0, 24, "{beam_width: 2}"))
    payload.pop("result")
    output, info = session.rerender(payload, 1)
    assert output == payload["candidates"][1]["output"]
    assert "re-ran the whole beam search" in info and "identical to the original: yes" in info
    with pytest.raises(ConfigError, match="row number from 0 to 1"):
        session.rerender(payload, 5)


def test_the_image_tab_shows_the_best_image_as_an_image(client):
    best, image, audio, compute, table, gallery, players, plot, history = client.predict(
        "zoo:digits", "7", "best-of-n", "classifier", "plain", 3, 0, 1.0, 48, 4, "", api_name="/generate_image")
    assert image["visible"] and not best["visible"] and not audio["visible"]
    from PIL import Image

    assert image["value"].endswith(".png") and len(gallery["value"]) == 3  # lossless: the pixels search chose
    assert Image.open(image["value"]).size == (16, 16)
    output, again, _, info = client.predict(1, api_name="/rerender_image")
    assert again["visible"] and output == table["data"][1][3] and "identical to the original: yes" in info
    assert "denoiser evals 12" in compute and all(row[3].startswith("<image 16x16 L sha256:") for row in table["data"])


def test_ditto_in_the_image_tab_plots_each_candidates_score_per_step(client):
    *_, history = client.predict("zoo:digits", "3", "ditto", "classifier", "plain", 2, 0, 1.0, 48, 4,
                                 "{opt_steps: 2, lr: 0.1}", api_name="/generate_image")
    assert history["visible"]
    rows = history["value"]["data"]
    assert len(rows) == 2 * 3  # 2 candidates x (the start + 2 Adam steps)


def test_concurrent_users_decode_in_one_batch_with_the_outputs_each_gets_alone():
    import threading
    import time

    from ponder.demos.app import DemoSession, checked_request

    def ask(prompt, seed):
        return checked_request("text", "zoo:arith", prompt, "best-of-n", "exact", "plain", 3, seed, 0.8, 32, "")

    asks = [("Q: 12+7*3\n", 1), ("Q: 9*9-40+6\n", 2), ("Q: 58+36-7*2\n", 3)]
    alone = DemoSession()
    expected = [alone.generate(ask(*a))["result"] for a in asks]
    session = DemoSession()
    session.load("text", "zoo:arith")
    results = {}
    # a first user's request holds the turn while three more arrive: they decode together
    busy = threading.Thread(target=lambda: session.server.run(lambda: time.sleep(0.3)))
    busy.start()
    time.sleep(0.05)
    users = [threading.Thread(target=lambda i=i: results.__setitem__(i, session.generate(ask(*asks[i]))["result"]))
             for i in range(3)]
    for user in users:
        user.start()
    for thread in [busy, *users]:
        thread.join(timeout=120)
    for i in range(3):
        assert [c.output for c in results[i].candidates] == [c.output for c in expected[i].candidates]
        assert results[i].compute.tokens == expected[i].compute.tokens
    stats = session.server.batch.stats
    assert stats.requests == 3 and stats.rows_per_step > 3  # three users' candidates shared forwards
