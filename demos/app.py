"""The Gradio demo (`ponder demo`): generate with any strategy, verifier and decoder, and look inside.

One tab per registered modality (`ponder.modalities.registry`), built by the same code for each from
the modality's spec, so a new modality shows up without touching this file. Each tab has a model
picker (the modality's zoo models, or type a local folder), strategy / verifier / decoder pickers with
their options, N and the seed; only the controls that apply to the loaded model are shown (token
decoding settings for a sequence model, denoising steps for a diffusion model). It shows the best
output as what it is (text, an image, an audio player; another kind by its one-line description),
every candidate with its score and seed (a table, plus a gallery for images and a player for each audio
candidate with its score before and after noise optimisation), the `Compute` summary, a scaling plot
(best score among the first N candidates), the score per optimisation step of DITTO / DITTO-2 (for audio,
the control loss), and a button that re-renders one candidate from its seed alone.

Generation runs through a queue with a concurrency limit (`--concurrency`, default 4); a model stays
loaded between requests. Concurrent users' requests run as tasks of one running decode batch
(`ponder.search.decoding.continuous.BatchServer`): they take turns, so the model is never used by
two threads at once, and their plain decoding on the same model fuses into one batch.
Bad input shows a Gradio error with ponder's one-line message, never a traceback.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ponder.errors import ConfigError, PonderError, check_int

# strategies whose candidates each come from their own seeded noise alone (re-render one by one)
INDEPENDENT_NOISE_STRATEGIES = ("sample", "best-of-n", "worst-of-n", "noise-random")
NO_VERIFIER = "none"
# small model outputs (16x16 digits) fill their frame with crisp pixels instead of a blurred thumbnail
IMAGE_CSS = ("[id^=best-image-] img, [id^=rerender-image-] img { width: 100%; height: 100%; object-fit: contain; "
             "image-rendering: pixelated; } [id^=gallery-] img { image-rendering: pixelated; }")
MAX_N = 32
log = logging.getLogger("ponder.demos")


# ---- the work, without Gradio (tested directly) -----------------------------------------------


class DemoSession:
    """What the app shares between requests: the loaded model (one at a time) and the running batch
    every request runs in (`BatchServer`: requests take turns, and concurrent users' decoding fuses)."""

    def __init__(self):
        from ponder.jobs.worker import ModelCache, quiet_loaders
        from ponder.search.decoding.continuous import BatchServer

        quiet_loaders()
        self.cache = ModelCache()
        self.server = BatchServer()

    def load(self, modality: str, model: str, load_options: dict | None = None):
        """The model (loaded once and kept between requests)."""
        return self.server.run(lambda: self.cache.model_for(modality, model, load_options))

    def is_denoiser(self, modality: str, model: str) -> bool:
        """Whether `model` denoises (steps apply) rather than decodes tokens (sampling settings apply)."""
        from ponder.search.core import Denoiser

        return isinstance(self.load(modality, model), Denoiser)

    def generate(self, request) -> dict:
        """One generation of a validated `ponder.request.Request`; returns ``Result.to_dict()`` (outputs
        that are not text described in one line) plus the request (for re-rendering) and the `Result`."""
        from ponder.jobs.outputs import payload_lines

        result = self.server.run(lambda: self.cache.run(request))
        return {"request": request.to_dict(), "result": result, **payload_lines(result)}

    def rerender(self, state: dict, position: int) -> tuple[Any, str]:
        """Re-render candidate `position` of a previous generation from its seed.

        A candidate drawn on its own (sample, best-of-N and the rest of that family) is decoded
        alone from (seed, index); one built jointly with others (beam, particles) can only come back
        by re-running the whole search, which is what happens then.

        Returns:
            (the output, a line saying how it was re-rendered and whether it matches).
        """
        from ponder.kernels.sampling import SamplingParams
        from ponder.search.core import candidate_seed
        from ponder.search.scaling import STEP_STRATEGIES, sample

        if not state or "candidates" not in state:
            raise ConfigError("generate first, then pick a candidate to re-render")
        candidates = state["candidates"]
        if not isinstance(position, int) or not 0 <= position < len(candidates):
            raise ConfigError(f"candidate must be a row number from 0 to {len(candidates) - 1}, got {position!r}")
        from ponder.request import Request

        request = Request(**state["request"])
        config, original = state["config"], candidates[position]
        index = original["meta"].get("index")
        denoised = "steps" in config and "decoder" not in config  # a diffusion model's result
        independent = (isinstance(index, int) and request.strategy not in STEP_STRATEGIES
                       and (not denoised or request.strategy in INDEPENDENT_NOISE_STRATEGIES)
                       and original["seed"] == candidate_seed(config["seed"], index))
        if independent:
            lm = self.load(request.modality, request.model, request.load_options)
            if denoised:
                result = self.server.run(lambda: sample(lm, request.prompt, None, n=config["n"], seed=config["seed"],
                                                        indices=[index], steps=config["steps"]))
                how = f"denoised alone from seed {original['seed']}"
            else:
                result = self.server.run(lambda: sample(
                    lm, request.prompt, None, n=config["n"], seed=config["seed"], indices=[index],
                    decoder=config["decoder"], sampling=SamplingParams(**config["sampling"]),
                    max_new_tokens=config["max_new_tokens"]))
                how = f"decoded alone from seed {original['seed']}"
            output = result.candidates[0].output
        else:
            output = self.generate(request)["result"].candidates[position].output
            how = f"re-ran the whole {request.strategy} search (its candidates depend on each other)"
        same = _same_output(output, original["output"])
        return output, f"candidate {position}: {how}; identical to the original: {'yes' if same else 'NO'}"


def _same_output(new: Any, old: Any) -> bool:
    return describe_output(new) == old


def describe_output(output: Any) -> Any:
    """How the demo shows an output in tables and state: text as is; any other kind as its one-line
    description (an image's size, mode and pixel digest, so a re-render can be checked byte for byte)."""
    if isinstance(output, str):
        return output
    from ponder.modalities.registry import kind_of

    return kind_of(output).line(output)


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
                    seed: Any, temperature: Any, max_new_tokens: Any, options_text: str, steps: Any = None):
    """The form's values as a validated `ponder.request.Request` (no model is loaded for a bad request).

    The options box may hold strategy and decoder options and the modality's load and generate options
    (e.g. ``{height: 32}`` for image diffusion), read as YAML."""
    from ponder.request import request_from_item

    n = check_int("n", _whole("n", n), maximum=MAX_N, what=f"candidates; the demo draws at most {MAX_N}")
    options = parse_options(options_text)
    verifier = None if not verifier or verifier == NO_VERIFIER else verifier
    if not model or not model.strip():
        raise ConfigError("pick a model: a zoo name or a local model folder")
    fields = {"temperature": temperature, "max_new_tokens": _whole("max new tokens", max_new_tokens)}
    if steps not in (None, "", 0):
        fields["steps"] = _whole("steps", steps)
    item = {"modality": modality, "model": model.strip(), "prompt": prompt, "strategy": strategy,
            "verifier": verifier, "decoder": decoder, "n": n, "seed": _whole("seed", seed),
            "options": {**options, **fields}}
    return request_from_item(item).validate()


def _whole(name: str, value: Any) -> int:
    """A form number that must be whole (Gradio numbers arrive as floats)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return int(value)


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


def optimisation_curve(payload: dict) -> list[dict]:
    """Each candidate's score per optimisation step (DITTO's ``score_history``, DITTO-2's surrogate's),
    for the demo's plot; empty when the strategy optimised nothing."""
    points = []
    for i, cand in enumerate(payload["candidates"]):
        meta = cand.get("meta") or {}
        values = meta.get("score_history") or meta.get("surrogate_history") or []
        points += [{"step": step, "score": value, "loss": -value, "candidate": f"#{i}"}
                   for step, value in enumerate(values)]
    return points


def audio_players(result) -> str:
    """HTML with a player for every audio candidate (inline WAV), its seed, score and, for noise optimisation,
    its score before and after; empty when no candidate is audio."""
    import base64
    import html

    from ponder.modalities import registry

    items = []
    for i, cand in enumerate(result.candidates):
        if registry.kind_of(cand.output) is not registry.AUDIO:
            continue
        data = base64.b64encode(registry.AUDIO.encode(cand.output)).decode("ascii")
        parts = [f"#{i}", f"seed {cand.seed}"]
        if cand.score is not None:
            parts.append(f"score {cand.score:.4f}")
        meta = cand.meta or {}
        if "score_before" in meta and "score_after" in meta:
            parts.append(f"before {meta['score_before']:.4f} \u2192 after {meta['score_after']:.4f}")
        best = " (best)" if cand is result.best else ""
        items.append(f'<div class="ponder-candidate"><div>{html.escape(", ".join(parts))}{best}</div>'
                     f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio></div>')
    return "".join(items)


def compute_summary(payload: dict) -> str:
    c = payload["compute"]
    best = payload["best"]
    chosen = "abstained (no candidate cleared the bar)" if best is None else (
        f"best: seed {best['seed']}" + ("" if best["score"] is None else f", score {best['score']:.4f}"))
    return (f"**Compute** — model calls {c['model_calls']}, draft calls {c['draft_calls']}, tokens {c['tokens']}, "
            f"denoiser evals {c['nfe']}, verifier calls {c['verifier_calls']}, backward passes "
            f"{c.get('backward_passes', 0)}, {c['seconds']:.2f} s  \n{chosen}")


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
    from ponder.modalities import registry
    from ponder.search.decoding import DECODERS, LOSSY
    from ponder.search.scaling import STRATEGIES

    spec = registry.get(modality)
    kind = spec.kind
    image_kind, audio_kind = registry.IMAGE, registry.AUDIO  # the kinds with a widget of their own
    models = model_choices(modality)
    examples = list(spec.examples)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                                label="Model (zoo name, or type a local folder)", elem_id=f"model-{modality}")
            prompt = gr.Textbox(value=examples[0] if examples else "", lines=3, label="Prompt")
            with gr.Row():
                strategy = gr.Dropdown(list(STRATEGIES), value="best-of-n", label="Strategy")
                verifier = gr.Dropdown([NO_VERIFIER, *spec.verifiers], value=spec.default_verifier or NO_VERIFIER,
                                       allow_custom_value=True, label="Verifier (or a folder)")
                decoder = gr.Dropdown(list(DECODERS), value="plain",
                                      label=f"Decoder (LOSSY: {', '.join(sorted(LOSSY))})")
            with gr.Row():
                n = gr.Slider(1, MAX_N, value=8, step=1, label="N (candidates)")
                seed = gr.Number(value=0, precision=0, label="Seed")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                max_new_tokens = gr.Slider(1, 128, value=48, step=1, label="Max new tokens")
                steps = gr.Slider(0, 100, value=0, step=1, label="Denoising steps (0 = the model's)", visible=False)
            options = gr.Textbox(value="", label=f"Strategy / decoder / {modality} options (YAML, e.g. "
                                                 f"{spec.option_hint})")
            model_info = gr.Markdown(elem_id=f"model-info-{modality}")
            run = gr.Button("Generate", variant="primary", elem_id=f"generate-{modality}")
            if examples:
                gr.Examples([[e] for e in examples], inputs=[prompt], label="Example prompts")
        with gr.Column(scale=1):
            best_text = gr.Textbox(label="Best output", lines=4, elem_id=f"best-{modality}",
                                   visible=kind not in (image_kind, audio_kind))
            best_image = gr.Image(label="Best output", type="pil", format="png", height=320,
                                  elem_id=f"best-image-{modality}", visible=kind is image_kind, interactive=False)
            best_audio = gr.Audio(label="Best output", type="numpy", format="wav",
                                  elem_id=f"best-audio-{modality}",
                                  visible=kind is audio_kind, interactive=False)
            summary = gr.Markdown(elem_id=f"compute-{modality}")
            table = gr.Dataframe(headers=["#", "seed", "score", "output"], label="Candidates", wrap=True,
                                 interactive=False, elem_id=f"candidates-{modality}")
            gallery = gr.Gallery(label="Candidates", visible=False, format="png", elem_id=f"gallery-{modality}")
            players = gr.HTML(visible=False, label="Candidates", elem_id=f"players-{modality}")
            plot = gr.LinePlot(x="N", y="best score", title="Best score vs N", label="Scaling",
                               elem_id=f"scaling-{modality}")
            # audio outputs are scored by controls (score = -loss): their plot shows the loss falling
            history = gr.LinePlot(x="step", y="loss" if kind is audio_kind else "score", color="candidate",
                                  title="Control loss per optimisation step" if kind is audio_kind
                                  else "Score per optimisation step", label="Optimisation", visible=False,
                                  elem_id=f"history-{modality}")
            with gr.Row():
                which = gr.Number(value=0, precision=0, label="Candidate # to re-render")
                again = gr.Button("Re-render from its seed")
            again_out = gr.Textbox(label="Re-rendered candidate", lines=3)
            again_image = gr.Image(label="Re-rendered candidate", type="pil", format="png", height=200,
                                   elem_id=f"rerender-image-{modality}",
                                   visible=False, interactive=False)
            again_audio = gr.Audio(label="Re-rendered candidate", type="numpy", format="wav", visible=False,
                                   interactive=False, elem_id=f"rerender-audio-{modality}")
            again_info = gr.Markdown()
    state = gr.State(None)

    def on_model(model_v):
        """Show only the controls that apply to the model: token settings or denoising steps."""
        if not model_v or not str(model_v).strip():
            return gr.update(), gr.update(), gr.update(), gr.update(), ""
        try:
            denoises = session.is_denoiser(modality, str(model_v).strip())
        except Exception as err:
            raise _as_gradio_error(err) from None
        what = "a diffusion model: denoising steps apply" if denoises else "a sequence model: sampling settings apply"
        return (gr.Dropdown(visible=not denoises), gr.Slider(visible=not denoises), gr.Slider(visible=not denoises),
                gr.Slider(visible=denoises), f"`{model_v}` is {what}")

    def on_generate(model_v, prompt_v, strategy_v, verifier_v, decoder_v, n_v, seed_v, temp_v, max_v, steps_v,
                    opts_v):
        import pandas as pd

        try:
            request = checked_request(modality, model_v, prompt_v, strategy_v, verifier_v, decoder_v, n_v, seed_v,
                                      temp_v, max_v, opts_v, steps=steps_v)
            if session.is_denoiser(request.modality, request.model):  # token settings do not apply
                request.temperature, request.max_new_tokens = 1.0, 64
            payload = session.generate(request)
        except Exception as err:
            raise _as_gradio_error(err) from None
        result = payload.pop("result")
        best = result.best
        images = [(c.output, f"#{i}" + ("" if c.score is None else f" score {c.score:.3f}"))
                  for i, c in enumerate(result.candidates) if registry.kind_of(c.output) is image_kind]
        shown = registry.kind_of(best.output) if best is not None else registry.TEXT
        line = payload["best"]["output"] if best is not None else "(abstained)"
        curve = pd.DataFrame(scaling_curve(payload), columns=["N", "best score"])
        steps_curve = pd.DataFrame(optimisation_curve(payload), columns=["step", "score", "loss", "candidate"])
        players_html = audio_players(result)
        return (gr.Textbox(value=line, visible=shown not in (image_kind, audio_kind)),
                gr.Image(value=best.output if shown is image_kind else None, visible=shown is image_kind),
                gr.Audio(value=_audio_value(best.output) if shown is audio_kind else None,
                         visible=shown is audio_kind),
                compute_summary(payload), table_rows(payload), gr.Gallery(value=images or None, visible=bool(images)),
                gr.HTML(value=players_html, visible=bool(players_html)),
                curve, gr.LinePlot(value=steps_curve, visible=not steps_curve.empty),
                {k: v for k, v in payload.items()})

    def on_rerender(state_v, which_v):
        try:
            output, info = session.rerender(state_v, int(which_v) if which_v is not None else -1)
        except Exception as err:
            raise _as_gradio_error(err) from None
        kind = registry.kind_of(output)
        return (describe_output(output),
                gr.Image(value=output if kind is image_kind else None, visible=kind is image_kind),
                gr.Audio(value=_audio_value(output) if kind is audio_kind else None, visible=kind is audio_kind), info)

    model.change(on_model, [model], [decoder, temperature, max_new_tokens, steps, model_info],
                 api_name=f"model_{modality}", concurrency_id="ponder-model")
    inputs = [model, prompt, strategy, verifier, decoder, n, seed, temperature, max_new_tokens, steps, options]
    run.click(on_generate, inputs,
              [best_text, best_image, best_audio, summary, table, gallery, players, plot, history, state],
              api_name=f"generate_{modality}", concurrency_limit=concurrency, concurrency_id="ponder-model")
    again.click(on_rerender, [state, which], [again_out, again_image, again_audio, again_info],
                api_name=f"rerender_{modality}",
                concurrency_limit=concurrency, concurrency_id="ponder-model")
    return model, on_model, [decoder, temperature, max_new_tokens, steps, model_info]


def _audio_value(audio) -> tuple[int, Any]:
    """An audio output as Gradio's (sample rate, int16 samples [T] or [T, C]) for its player."""
    from ponder.modalities.registry import pcm16

    pcm = pcm16(audio)  # [C, T], what the WAV file holds
    return int(audio.sample_rate), (pcm[0] if pcm.shape[0] == 1 else pcm.T)


def build_app(concurrency: int = 4, modalities: tuple[str, ...] | None = None):
    """The demo as a `gradio.Blocks` (not launched): one tab per registered modality (or `modalities`)."""
    from ponder.modalities import registry

    gr = _gradio()
    session = DemoSession()
    with gr.Blocks(title="ponder demo", analytics_enabled=False) as app:
        gr.Markdown("## ponder — inference-time search\nPick a model, a strategy, a verifier and N; every "
                    "candidate comes back with its score, its seed and what it cost.")
        tabs = []
        with gr.Tabs():
            for modality in modalities or tuple(registry.names()):
                registry.get(modality)  # an unregistered name is one clear error
                with gr.Tab(modality.capitalize(), id=modality):
                    tabs.append(_modality_tab(gr, session, modality, concurrency))
        for model, on_model, outputs in tabs:  # the page opens with the controls of each tab's first model
            app.load(on_model, [model], outputs)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, concurrency: int = 4, block: bool = True, **options):
    """Build and serve the demo on `host`:`port` (127.0.0.1 unless told otherwise).

    Returns the launched app when `block` is False (tests), else serves until interrupted.
    """
    app = build_app(concurrency=concurrency)
    gr = _gradio()
    # system fonts: the default theme would fetch its fonts from the web
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True, quiet=not block,
               share=False, footer_links=["api"], theme=theme, css=IMAGE_CSS, **options)
    return app
