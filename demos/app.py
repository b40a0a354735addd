"""The Gradio demo (`ponder demo`): generate with any strategy, verifier and decoder, and look inside.

One tab per modality in `ponder.api.MODALITIES`, built by the same code for each, so a new
modality shows up without touching this file. Each tab has a model picker (zoo names, or type a
local folder), strategy / verifier / decoder pickers with their options, N and the seed; it shows
the best output, every candidate with its score and seed (a table, plus a gallery when outputs are
images), the `Compute` summary and a scaling plot (best score among the first N candidates), and a
button that re-renders one candidate from its seed alone.

Generation runs through a queue with a concurrency limit; a model stays loaded between requests.
Bad input shows a Gradio error with ponder's one-line message, never a traceback.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ponder.errors import ConfigError, PonderError

# example prompts per modality (a modality without examples still gets its tab)
EXAMPLE_PROMPTS: dict[str, list[str]] = {
    "text": ["Q: 58+36-7*2\n", "Q: 12+7*3\n", "Q: 9*9-40\n"],
    "image": ["7", "3", "0"],
}
DEFAULT_VERIFIER = {"text": "exact", "image": "classifier"}
OPTION_HINTS = {"text": "{beam_width: 2} or {draft: zoo:arith-draft}", "image": "{steps: 10} or {step_size: 0.5}"}
# image strategies whose candidates each come from their own seeded noise alone (re-render one by one)
INDEPENDENT_IMAGE_STRATEGIES = ("sample", "best-of-n", "worst-of-n", "noise-random")
NO_VERIFIER = "none"
MAX_N = 32
log = logging.getLogger("ponder.demos")


# ---- the work, without Gradio (tested directly) -----------------------------------------------


class DemoSession:
    """What the app shares between requests: the loaded model (one at a time) and a lock."""

    def __init__(self):
        from ponder.jobs.worker import ModelCache, quiet_loaders

        quiet_loaders()
        self.cache = ModelCache()
        self.lock = threading.Lock()

    def generate(self, modality: str, model: str, prompt: str, strategy: str, verifier: str | None, decoder: str,
                 n: int, seed: int, temperature: float, max_new_tokens: int, options: dict) -> dict:
        """One generation; returns ``Result.to_dict()`` plus the request (for re-rendering)."""
        import ponder

        request = {"modality": modality, "model": model, "prompt": prompt, "strategy": strategy,
                   "verifier": verifier, "decoder": decoder, "n": n, "seed": seed, "temperature": temperature,
                   "max_new_tokens": max_new_tokens, "options": options}
        with self.lock:
            lm = self.cache.model_for(modality, model)
            scorer = self.cache.verifier_for(modality, verifier, lm) if verifier else None
            result = ponder.generate(lm, prompt, strategy=strategy, n=n, verifier=scorer, decoder=decoder, seed=seed,
                                     temperature=temperature, max_new_tokens=max_new_tokens, **options)
        payload = result.to_dict()
        for shown, cand in zip([payload["best"], *payload["candidates"]], [result.best, *result.candidates]):
            if shown is not None and not isinstance(cand.output, str):
                shown["output"] = describe_output(cand.output)
        return {"request": request, "result": result, **payload}

    def rerender(self, state: dict, position: int) -> tuple[Any, str]:
        """Re-render candidate `position` of a previous generation from its seed.

        A candidate drawn on its own (sample, best-of-N and the rest of that family) is decoded
        alone from (seed, index); one built jointly with others (beam, particles) can only come back
        by re-running the whole search, which is what happens then.

        Returns:
            (the output, a line saying how it was re-rendered and whether it matches).
        """
        import ponder
        from ponder.kernels.sampling import SamplingParams
        from ponder.search.core import candidate_seed
        from ponder.search.scaling import STEP_STRATEGIES, sample

        if not state or "candidates" not in state:
            raise ConfigError("generate first, then pick a candidate to re-render")
        candidates = state["candidates"]
        if not isinstance(position, int) or not 0 <= position < len(candidates):
            raise ConfigError(f"candidate must be a row number from 0 to {len(candidates) - 1}, got {position!r}")
        request, config, original = state["request"], state["config"], candidates[position]
        index = original["meta"].get("index")
        denoised = "steps" in config and "decoder" not in config  # a diffusion model's result
        independent = (isinstance(index, int) and request["strategy"] not in STEP_STRATEGIES
                       and (not denoised or request["strategy"] in INDEPENDENT_IMAGE_STRATEGIES)
                       and original["seed"] == candidate_seed(config["seed"], index))
        with self.lock:
            lm = self.cache.model_for(request["modality"], request["model"])
            if independent and denoised:
                result = sample(lm, request["prompt"], None, n=config["n"], seed=config["seed"], indices=[index],
                                steps=config["steps"])
                output, how = result.candidates[0].output, f"denoised alone from seed {original['seed']}"
            elif independent:
                result = sample(lm, request["prompt"], None, n=config["n"], seed=config["seed"], indices=[index],
                                decoder=config["decoder"], sampling=SamplingParams(**config["sampling"]),
                                max_new_tokens=config["max_new_tokens"])
                output, how = result.candidates[0].output, f"decoded alone from seed {original['seed']}"
            else:
                scorer = self.cache.verifier_for(request["modality"], request["verifier"], lm) \
                    if request["verifier"] else None
                result = ponder.generate(lm, request["prompt"], strategy=request["strategy"], n=request["n"],
                                         verifier=scorer, decoder=request["decoder"], seed=request["seed"],
                                         temperature=request["temperature"],
                                         max_new_tokens=request["max_new_tokens"], **request["options"])
                output = result.candidates[position].output
                how = f"re-ran the whole {request['strategy']} search (its candidates depend on each other)"
        same = _same_output(output, original["output"])
        return output, f"candidate {position}: {how}; identical to the original: {'yes' if same else 'NO'}"


def _same_output(new: Any, old: Any) -> bool:
    from ponder.search.core import to_jsonable

    return (describe_output(new) if _is_image(new) else to_jsonable(new)) == old


def _is_image(output: Any) -> bool:
    from PIL import Image

    return isinstance(output, Image.Image)


def describe_output(output: Any) -> Any:
    """How the demo shows an output in tables and state: text as is; an image as its size, mode and a
    digest of its pixels (so a re-render can be checked byte for byte)."""
    if not _is_image(output):
        from ponder.search.core import to_jsonable

        return to_jsonable(output)
    import hashlib

    digest = hashlib.sha256(output.tobytes()).hexdigest()[:12]
    return f"<image {output.width}x{output.height} {output.mode} sha256:{digest}>"


def parse_options(text: str) -> dict:
    """Strategy options typed as YAML / JSON (``{beam_width: 2}``); empty means none."""
    import yaml

    if not text or not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"options are not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"options must be a mapping like {{beam_width: 2}}, got {text.strip()[:60]!r}")
    return value


def checked_request(modality: str, model: str, prompt: str, strategy: str, verifier: str, decoder: str, n: Any,
                    seed: Any, temperature: Any, max_new_tokens: Any, options_text: str) -> tuple:
    """The form's values, checked the way a job item is (no model is loaded for a bad request)."""
    from ponder.jobs.spec import parse_job

    for name, value in (("n", n), ("seed", seed), ("max new tokens", max_new_tokens)):
        if value is None or float(value) != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
    options = parse_options(options_text)
    verifier = None if not verifier or verifier == NO_VERIFIER else verifier
    if not model or not model.strip():
        raise ConfigError("pick a model: a zoo name or a local model folder")
    item = {"id": "demo", "modality": modality, "model": model.strip(), "prompt": prompt, "strategy": strategy,
            "verifier": verifier, "decoder": decoder, "n": int(n), "seed": int(seed),
            "options": {**options, "temperature": float(temperature), "max_new_tokens": int(max_new_tokens)}}
    parse_job({"items": [item]}, source="request")
    if int(n) > MAX_N:
        raise ConfigError(f"n is at most {MAX_N} in the demo, got {int(n)}")
    return (modality, model.strip(), prompt, strategy, verifier, decoder, int(n), int(seed), float(temperature),
            int(max_new_tokens), options)


def table_rows(payload: dict) -> list[list]:
    """One row per candidate: position, seed, score, output (text) or a note (other outputs)."""
    rows = []
    for i, cand in enumerate(payload["candidates"]):
        output = cand["output"] if isinstance(cand["output"], str) else f"({type(cand['output']).__name__})"
        score = None if cand["score"] is None else round(cand["score"], 4)
        rows.append([i, str(cand["seed"]), score, output])
    return rows


def scaling_curve(payload: dict) -> list[dict]:
    """Best score among the first N candidates, for N = 1..n (empty when nothing was scored)."""
    best, points = None, []
    for i, cand in enumerate(payload["candidates"], 1):
        if cand["score"] is not None:
            best = cand["score"] if best is None else max(best, cand["score"])
        if best is not None:
            points.append({"N": i, "best score": best})
    return points


def compute_summary(payload: dict) -> str:
    c = payload["compute"]
    best = payload["best"]
    chosen = "abstained (no candidate cleared the bar)" if best is None else (
        f"best: seed {best['seed']}" + ("" if best["score"] is None else f", score {best['score']:.4f}"))
    return (f"**Compute** — model calls {c['model_calls']}, draft calls {c['draft_calls']}, tokens {c['tokens']}, "
            f"denoiser evals {c['nfe']}, verifier calls {c['verifier_calls']}, {c['seconds']:.2f} s  \n{chosen}")


# ---- the Gradio app -------------------------------------------------------------------------------


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline tool
    import gradio as gr

    return gr


def _as_gradio_error(err: Exception):
    gr = _gradio()
    if isinstance(err, PonderError):
        return gr.Error(str(err), print_exception=False)
    log.exception("demo request failed")
    return gr.Error(f"{type(err).__name__}: {' '.join(str(err).split())[:300]}", print_exception=False)


def model_choices(modality: str) -> list[str]:
    from ponder import zoo

    return [f"zoo:{e.name}" for e in zoo.ZOO.values() if e.modality == modality and e.kind == "model" and e.built]


def _modality_tab(gr, session: DemoSession, modality: str, concurrency: int) -> None:
    from ponder import api
    from ponder.search.decoding import DECODERS, LOSSY
    from ponder.search.scaling import STRATEGIES

    models = model_choices(modality)
    examples = EXAMPLE_PROMPTS.get(modality, [])
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                                label="Model (zoo name, or type a local folder)")
            prompt = gr.Textbox(value=examples[0] if examples else "", lines=3, label="Prompt")
            with gr.Row():
                strategy = gr.Dropdown(list(STRATEGIES), value="best-of-n", label="Strategy")
                names = api.IMAGE_VERIFIER_NAMES if modality == "image" else api.VERIFIER_NAMES
                verifier = gr.Dropdown([NO_VERIFIER, *names], value=DEFAULT_VERIFIER.get(modality, NO_VERIFIER),
                                       allow_custom_value=True, label="Verifier (or a folder)")
                decoder = gr.Dropdown(list(DECODERS), value="plain",
                                      label=f"Decoder (LOSSY: {', '.join(sorted(LOSSY))})")
            with gr.Row():
                n = gr.Slider(1, MAX_N, value=8, step=1, label="N (candidates)")
                seed = gr.Number(value=0, precision=0, label="Seed")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                max_new_tokens = gr.Slider(1, 128, value=48, step=1, label="Max new tokens")
            hint = OPTION_HINTS.get(modality, "{beam_width: 2}")
            options = gr.Textbox(value="", label=f"Strategy / decoder options (YAML, e.g. {hint})")
            run = gr.Button("Generate", variant="primary", elem_id=f"generate-{modality}")
            if examples:
                gr.Examples([[e] for e in examples], inputs=[prompt], label="Example prompts")
        with gr.Column(scale=1):
            best = gr.Textbox(label="Best output", lines=4, elem_id=f"best-{modality}")
            summary = gr.Markdown(elem_id=f"compute-{modality}")
            table = gr.Dataframe(headers=["#", "seed", "score", "output"], label="Candidates", wrap=True,
                                 interactive=False, elem_id=f"candidates-{modality}")
            gallery = gr.Gallery(label="Candidates", visible=False)
            plot = gr.LinePlot(x="N", y="best score", title="Best score vs N", label="Scaling",
                               elem_id=f"scaling-{modality}")
            with gr.Row():
                which = gr.Number(value=0, precision=0, label="Candidate # to re-render")
                again = gr.Button("Re-render from its seed")
            again_out = gr.Textbox(label="Re-rendered candidate", lines=3)
            again_info = gr.Markdown()
    state = gr.State(None)

    def on_generate(model_v, prompt_v, strategy_v, verifier_v, decoder_v, n_v, seed_v, temp_v, max_v, opts_v):
        import pandas as pd

        try:
            request = checked_request(modality, model_v, prompt_v, strategy_v, verifier_v, decoder_v, n_v, seed_v,
                                      temp_v, max_v, opts_v)
            payload = session.generate(*request)
        except Exception as err:
            raise _as_gradio_error(err) from None
        result = payload.pop("result")
        images = [(c.output, f"#{i}" + ("" if c.score is None else f" score {c.score:.3f}"))
                  for i, c in enumerate(result.candidates) if not isinstance(c.output, str)]
        best_out = payload["best"]["output"] if payload["best"] is not None else "(abstained)"
        curve = pd.DataFrame(scaling_curve(payload), columns=["N", "best score"])
        return (best_out if isinstance(best_out, str) else "(see the gallery)", compute_summary(payload),
                table_rows(payload), gr.Gallery(value=images or None, visible=bool(images)), curve,
                {k: v for k, v in payload.items()})

    def on_rerender(state_v, which_v):
        try:
            output, info = session.rerender(state_v, int(which_v) if which_v is not None else -1)
        except Exception as err:
            raise _as_gradio_error(err) from None
        return (output if isinstance(output, str) else str(describe_output(output))), info

    inputs = [model, prompt, strategy, verifier, decoder, n, seed, temperature, max_new_tokens, options]
    run.click(on_generate, inputs, [best, summary, table, gallery, plot, state], api_name=f"generate_{modality}",
              concurrency_limit=concurrency, concurrency_id="ponder-model")
    again.click(on_rerender, [state, which], [again_out, again_info], api_name=f"rerender_{modality}",
                concurrency_limit=concurrency, concurrency_id="ponder-model")


def build_app(concurrency: int = 1, modalities: tuple[str, ...] | None = None):
    """The demo as a `gradio.Blocks` (not launched)."""
    from ponder import api

    gr = _gradio()
    session = DemoSession()
    with gr.Blocks(title="ponder demo", analytics_enabled=False) as app:
        gr.Markdown("## ponder — inference-time search\nPick a model, a strategy, a verifier and N; every "
                    "candidate comes back with its score, its seed and what it cost.")
        with gr.Tabs():
            for modality in modalities or api.MODALITIES:
                with gr.Tab(modality.capitalize(), id=modality):
                    _modality_tab(gr, session, modality, concurrency)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1, block: bool = True, **options):
    """Build and serve the demo on `host`:`port` (127.0.0.1 unless told otherwise).

    Returns the launched app when `block` is False (tests), else serves until interrupted.
    """
    app = build_app(concurrency=concurrency)
    gr = _gradio()
    # system fonts: the default theme would fetch its fonts from the web
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True, quiet=not block,
               share=False, footer_links=["api"], theme=theme, **options)
    return app
