"""The `ponder` command line: generate, zoo, bench, render (batch jobs), demo (Gradio).

Bad input prints one line on stderr and exits 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ponder.errors import ConfigError, PonderError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


STRATEGY_FLAGS = [
    ("--beam-width", int, "beam, dvts, diverse-beam: next steps sampled per kept beam"),
    ("--groups", int, "diverse-beam: number of groups"),
    ("--diversity", float, "diverse-beam: penalty per repeat of a step chosen by an earlier group"),
    ("--max-steps", int, "step-level strategies: most rounds"),
    ("--weight-temperature", float, "particles: T in softmax(score / T), > 0"),
    ("--resampling", str, "particles: multinomial | systematic"),
    ("--ess-threshold", float, "particles: resample when ESS < this * n (1 = every step)"),
    ("--gibbs-iterations", int, "particles: > 1 runs Particle Gibbs"),
    ("--select", str, "particles: weight | sample | vote"),
    ("--probe", int, "compute-optimal: samples that estimate difficulty"),
    ("--confidence", float, "adaptive: stop once the best score (or the vote share) reaches this"),
    ("--abstain-below", float, "return no answer when the best score is below this"),
    ("--draft-len", int, "speculative, spec-adaptive, prompt-lookup, aded, layer-skip, medusa, bild, ead: tokens "
                        "drafted per step (most, for adaptive ones); tree, rsd, spectr, token-recycling: draft tree "
                        "depth; dyspec: most expansion rounds"),
    ("--threshold", float, "spec-adaptive: stop drafting once P(any rejection) exceeds this, in (0, 1); "
                           "dyspec: smallest draft path probability a tree node needs, in [0, 1)"),
]


def _strategy_options(args) -> dict:
    import yaml

    options = {}
    for flag, _, _ in STRATEGY_FLAGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option wants KEY=VALUE, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--option {key}: cannot read value {value!r}: {err}") from None
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Inference-time search and fast decoding.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate with a strategy, a verifier and a decoder")
    gen.add_argument("modality", help="text | image")
    gen.add_argument("--model", required=True, help="zoo:NAME or a local model folder")
    gen.add_argument("--prompt", required=True, help="the prompt (use $'...' for newlines in bash)")
    gen.add_argument("--strategy", default="sample",
                     help="sample | best-of-n | weighted-best-of-n | worst-of-n | self-consistency | rpc | beam | "
                          "dvts | diverse-beam | particles | compute-optimal | adaptive (default: sample)")
    gen.add_argument("--n", type=int, default=1, help="number of candidates (default: 1)")
    gen.add_argument("--verifier", default=None,
                     help="exact | orm | prm | self | ensemble | a,b (ensemble of names) | a local verifier folder")
    gen.add_argument("--decoder", default="plain",
                     help="lossless: plain | speculative | spec-adaptive | prompt-lookup | tree | dyspec | rsd | "
                          "spectr | token-recycling | aded | lookahead | jacobi | layer-skip | medusa; "
                          "LOSSY (output not distributed as plain sampling's; refused by --lossless): bild | ead | "
                          "medusa with --option acceptance=typical; auto: the fastest lossless decoder measured for "
                          "this workload (speed history of `ponder bench speculative`, --option history=DIR) "
                          "(default: plain)")
    gen.add_argument("--lossless", action="store_true",
                     help="refuse lossy decoders (bild, ead, medusa typical acceptance): one error, exit 2")
    gen.add_argument("--draft", default=None, help="draft model (zoo:NAME or folder) for decoders that use one")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]; 1 = off")
    gen.add_argument("--min-p", type=float, default=0.0, help="in [0, 1]; 0 = off")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    img = gen.add_argument_group("image diffusion models")
    img.add_argument("--steps", type=int, default=None, help="denoising steps per sample (positive; default: the "
                     "model's)")
    img.add_argument("--size", default=None, metavar="HxW", help="image size in pixels, e.g. 32x32 or 32 (default: "
                     "the model's; must be a multiple of its VAE / network factor)")
    img.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (>= 1; 1 = off)")
    img.add_argument("--sampler", default=None,
                     help="ddim | euler | euler-karras | flow (default: the scheduler's kind)")
    opts = gen.add_argument_group("strategy options (only the ones a strategy takes are allowed)")
    for flag, kind, text in STRATEGY_FLAGS:
        opts.add_argument(flag, type=kind, default=None, help=text)
    opts.add_argument("--calibrate", type=int, default=None, metavar="M",
                      help="score by the verifier's quantile among M of the model's own samples (InfAlign)")
    opts.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="any other strategy option (VALUE read as YAML: 3, 0.5, true, [1, 2], {1: beam})")
    gen.add_argument("--trust-remote-code", action="store_true", help="allow custom model code in the folder")
    gen.add_argument("--out", type=Path, default=None, help="write result.json and candidate files here")
    gen.add_argument("--json", action="store_true", help="print the result as one JSON object")

    zoo = sub.add_parser("zoo", help="the zoo of tiny models ponder trains itself")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="list zoo models and whether their weights are built")
    zl.add_argument("--json", action="store_true")
    zt = zsub.add_parser("train", help="run a zoo recipe (writes the shipped weights)")
    zt.add_argument("name")
    zt.add_argument("--steps", type=_positive_int, default=None, help="override the recipe's steps (smoke runs)")
    zt.add_argument("--out", type=Path, default=None, help="zoo folder to write into (default: the shipped one)")
    zt.add_argument("--smoke", action="store_true", help="tiny model, few steps: check the recipe end to end")
    zs = zsub.add_parser("sample", help="print problems of a zoo task with their answers")
    zs.add_argument("name", help="arith")
    zs.add_argument("--split", default="heldout", help="train | heldout")
    zs.add_argument("--count", type=_positive_int, default=5)
    zs.add_argument("--seed", type=int, default=0)
    zs.add_argument("--template", default="Q", help="Q (steps) | R (rewrite, copy-heavy)")
    zs.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks: ratios against a baseline measured in the same run")
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    bench.add_argument("--list", action="store_true", help="list benchmarks")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; figures are noisier)")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--plot", type=Path, default=None, help="write the PNGs the bench draws here")

    render = sub.add_parser("render", help="render a batch job (prompts x seeds x strategies); resumable")
    render.add_argument("job", type=Path, help="job file: YAML (defaults, matrix, items) or JSONL (one item a line)")
    render.add_argument("--out", type=Path, required=True, help="output folder (manifest.jsonl + one folder per item)")
    render.add_argument("--backend", default="local", help="local | ray (default: local)")
    render.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    render.add_argument("--workers", type=_positive_int, default=None, help="Ray actors (default: one per CPU)")
    render.add_argument("--num-gpus", type=float, default=0.0, help="GPUs each Ray actor reserves (default: 0)")
    render.add_argument("--retries", type=int, default=1, help="extra tries for an item that fails (default: 1)")
    render.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads per worker (default: 1; raise it for one large model on idle cores)")
    render.add_argument("--dry-run", action="store_true", help="print the expanded plan and its size; write nothing")
    render.add_argument("--json", action="store_true", help="print the summary (or plan) as one JSON object")
    render.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="open the Gradio demo")
    demo.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    demo.add_argument("--port", type=_positive_int, default=7860)
    demo.add_argument("--concurrency", type=_positive_int, default=1, help="generations at a time (default: 1)")
    return parser


def _write_atomic(path: Path, data: str) -> None:
    """Temp file in the same folder, fsync, rename: a reader never sees half a file."""
    _write_atomic_bytes(path, data.encode())


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    from ponder.jobs.store import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings on the CLI's stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_generate(args) -> int:
    import ponder

    if args.n <= 0:
        raise ConfigError(f"--n must be a positive integer, got {args.n}")
    if args.max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.scaling.common import checked_sampling

    # bad sampling options, strategy names and options fail before any model loads
    checked_sampling(SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p))
    from ponder.api import check_lossless, check_options
    from ponder.search.scaling import get_strategy

    options = _strategy_options(args)
    check_options(args.strategy, get_strategy(args.strategy), args.decoder, options)
    check_lossless(args.decoder, options, args.lossless)  # before any model loads
    load_options = _image_load_options(args)
    if args.steps is not None:
        options["steps"] = args.steps
    _quiet_transformers()
    model = ponder.load(args.modality, args.model, trust_remote_code=args.trust_remote_code, **load_options)
    result = ponder.generate(
        model, args.prompt, strategy=args.strategy, n=args.n, verifier=args.verifier, decoder=args.decoder,
        draft=args.draft, seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, max_new_tokens=args.max_new_tokens, stop=args.stop, calibrate=args.calibrate,
        lossless=args.lossless, **options,
    )
    payload = result.to_dict()
    images = any(_is_image(c.output) for c in [result.best, *result.candidates] if c is not None)
    if args.out is not None:
        from ponder.jobs.outputs import encoder_for

        files = []
        for i, cand in enumerate(result.candidates):
            encoder = encoder_for(cand.output)  # text -> .txt, image -> .png (the batch jobs' encoders)
            name = f"candidate_{i:03d}{encoder.suffix}"
            _write_atomic_bytes(args.out / name, encoder.encode(cand.output))
            files.append(name)
            if not isinstance(cand.output, str):
                payload["candidates"][i]["output"] = name
        if result.best is not None and not isinstance(result.best.output, str):
            encoder = encoder_for(result.best.output)
            _write_atomic_bytes(args.out / f"best{encoder.suffix}", encoder.encode(result.best.output))
            payload["best"]["output"] = f"best{encoder.suffix}"
            files.append(f"best{encoder.suffix}")
        payload["files"] = files
        _write_atomic(args.out / "result.json", json.dumps(payload, indent=2) + "\n")
    elif images:  # a PIL image has no JSON form: describe it (with --out: its file name)
        for entry, cand in zip([payload["best"], *payload["candidates"]], [result.best, *result.candidates]):
            if entry is not None and _is_image(cand.output):
                entry["output"] = f"<image {cand.output.width}x{cand.output.height} {cand.output.mode}>"
    if args.json:
        print(json.dumps(payload))
    else:
        best = result.best
        if best is None:
            print("(abstained)")
        elif images:
            print(str(args.out / "best.png") if args.out is not None else payload["best"]["output"])
        else:
            print(best.output)
        c = result.compute
        scores = ", ".join("-" if x.score is None else f"{x.score:.3f}" for x in result.candidates)
        cost = f"NFE {c.nfe}, verifier calls {c.verifier_calls}" if c.nfe else f"tokens {c.tokens}"
        print(f"# {len(result.candidates)} candidate(s); scores [{scores}]; model calls {c.model_calls}, "
              f"{cost}, {c.seconds:.2f}s", file=sys.stderr)
    return 0


def _image_load_options(args) -> dict:
    """--size / --guidance-scale / --sampler as load options of an image model (ConfigError elsewhere)."""
    given = {"--size": args.size, "--guidance-scale": args.guidance_scale, "--sampler": args.sampler}
    if args.modality != "image":
        used = [flag for flag, value in given.items() if value is not None]
        if used:
            raise ConfigError(f"{', '.join(used)} apply to image models, not {args.modality!r}")
        if args.steps is not None:
            raise ConfigError(f"--steps (denoising steps) applies to image diffusion models, not {args.modality!r}")
        return {}
    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps must be a positive integer (denoising steps), got {args.steps}")
    options = {"guidance_scale": args.guidance_scale, "sampler": args.sampler}
    if args.size is not None:
        height, sep, width = args.size.lower().partition("x")
        try:
            options["height"] = int(height)
            options["width"] = int(width) if sep else int(height)
        except ValueError:
            raise ConfigError(f"--size wants HEIGHTxWIDTH or one number of pixels, got {args.size!r}") from None
    return {k: v for k, v in options.items() if v is not None}


def _is_image(output) -> bool:
    if output is None or "PIL" not in sys.modules:
        return False
    from PIL import Image

    return isinstance(output, Image.Image)


def cmd_zoo(args) -> int:
    from ponder import zoo

    if args.zoo_command == "list":
        rows = [{"name": e.name, "modality": e.modality, "kind": e.kind, "built": e.built or e.name == "exact",
                 "summary": e.summary, "metrics": e.card().get("metrics", {})} for e in zoo.ZOO.values()]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                state = "ready" if r["built"] else "not built"
                print(f"zoo:{r['name']:<12} {r['modality']:<6} {r['kind']:<9} {state:<9} {r['summary']}")
        return 0
    if args.zoo_command == "train":
        zoo.entry(args.name)  # unknown names fail before any work
        card = zoo.train(args.name, log=lambda line: print(line, file=sys.stderr, flush=True), steps=args.steps,
                         out_dir=args.out, smoke=args.smoke)
        print(json.dumps({"name": card["name"], "metrics": card["metrics"]}))
        return 0
    # sample
    from ponder.modalities.text import arith

    if args.name.removeprefix("zoo:") != "arith":
        raise ConfigError(f"zoo sample knows the task 'arith', got {args.name!r}")
    if args.split not in arith.SPLITS:
        raise ConfigError(f"--split {args.split!r} is not allowed; use one of {', '.join(arith.SPLITS)}")
    if args.template not in arith.TEMPLATES:
        raise ConfigError(f"--template {args.template!r} is not allowed; use one of {', '.join(arith.TEMPLATES)}")
    probs = arith.problems(args.split, args.count, seed=args.seed, template=args.template)
    rows = [{"prompt": p.prompt, "answer": p.answer, "solution": p.solution(), "split": p.split} for p in probs]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r["prompt"] + r["solution"])
    return 0


def cmd_bench(args) -> int:
    from ponder import bench

    if args.list:
        for name, spec in bench.BENCHES.items():
            print(f"{name:<16} {spec.summary}")
        return 0
    names = args.names or list(bench.BENCHES)
    reports = [bench.run(name, quick=args.quick, plot_dir=args.plot) for name in names]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
    else:
        for rep in reports:
            print(bench.format_report(rep))
    return 0 if all(g["met"] for rep in reports for g in rep["goals"]) else 1


def cmd_render(args) -> int:
    from ponder import jobs

    job = jobs.load_job(args.job)  # a malformed job fails here, before anything is written
    if args.dry_run:
        plan = jobs.plan_dict(job, args.out)
        print(json.dumps(plan) if args.json else jobs.format_plan(plan))
        return 0
    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}")
    summary = jobs.run_job(job, args.out, backend=args.backend, retries=args.retries, address=args.address,
                           workers=args.workers, num_gpus=args.num_gpus, threads=args.threads,
                           progress=not args.no_progress)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 1 if summary.failed else 0


def cmd_demo(args) -> int:
    import importlib

    # demos sit above sdk in the import order: the CLI reaches the app by name, on demand
    app = importlib.import_module("ponder.demos.app")
    app.launch(host=args.host, port=args.port, concurrency=args.concurrency)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"generate": cmd_generate, "zoo": cmd_zoo, "bench": cmd_bench, "render": cmd_render, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except PonderError as err:
        if args.debug:
            raise
        print(f"ponder: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # e.g. --out names a file, or a folder we may not write
        if args.debug:
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"ponder: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ponder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
