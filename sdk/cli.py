"""The `ponder` command line: generate, zoo, bench, render (batch jobs), demo (Gradio).

Bad input prints one line on stderr and exits 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ponder.errors import ConfigError, InputError, PonderError


def _positive_int(text: str) -> int:
    from ponder.errors import check_int

    try:
        return check_int("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    ("--draft-len", int, "speculative, spec-adaptive, prompt-lookup, aded, layer-skip, medusa, chimera, bild, ead: "
                        "tokens drafted per step (most, for adaptive ones); tree, rsd, spectr, token-recycling: draft "
                        "tree depth; dyspec: most expansion rounds"),
    ("--opt-steps", int, "ditto, ditto-2: Adam steps on the initial noise (default 20)"),
    ("--lr", float, "ditto, ditto-2: Adam step size on the initial noise (default 0.05)"),
    ("--student", str, "ditto-2: a one-step student of the model (zoo:NAME or folder; default: the model's own "
                       "one-step x0 prediction)"),
    ("--threshold", float, "spec-adaptive: stop drafting once P(any rejection) exceeds this, in (0, 1); "
                           "dyspec: smallest draft path probability a tree node needs, in [0, 1)"),
]


def _key_values(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` flags as a dict, each VALUE read as YAML."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} wants KEY=VALUE, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"{flag} {key}: cannot read value {value!r}: {err}") from None
    return options


def _strategy_options(args) -> dict:
    options = {}
    for flag, _, _ in STRATEGY_FLAGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return {**options, **_key_values(args.option, "--option")}


def _context(value: str | None) -> str | None:
    """--context TEXT, or --context @FILE (the file's text, read as UTF-8)."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--context {value}: cannot read {path}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Inference-time search and fast decoding.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_generate(sub)

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
    zs.add_argument("name", help="a zoo task: " + " | ".join(_tasks()) if _tasks() else "a zoo task")
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
    bench.add_argument("--device", default=None, metavar="DEVICE",
                       help="run a bench's device mode, e.g. --device cuda (`kernels` only)")

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
    render.add_argument("--ship", default="auto", choices=["auto", "code", "all", "none"],
                        help="what Ray's runtime environment brings to the nodes: auto (ponder, the job's zoo models "
                             "and ponder's requirements for an --address cluster; nothing for a local Ray), code "
                             "(ponder and the zoo models only), all, none")
    render.add_argument("--no-fuse", action="store_true",
                        help="render item by item instead of decoding the items of one model in one running "
                             "batch (continuous batching; the default)")
    render.add_argument("--max-rows", type=_positive_int, default=64,
                        help="rows a running batch holds before waiting items queue (default: 64)")
    render.add_argument("--dry-run", action="store_true", help="print the expanded plan and its size; write nothing")
    render.add_argument("--json", action="store_true", help="print the summary (or plan) as one JSON object")
    render.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="open the Gradio demo")
    demo.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    demo.add_argument("--port", type=_positive_int, default=7860)
    demo.add_argument("--concurrency", type=_positive_int, default=4,
                      help="generations at a time; concurrent users' decoding on one model fuses into one batch "
                           "(default: 4)")
    return parser


def _quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings on the CLI's stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _add_generate(sub) -> None:
    """`ponder generate`: the common flags, then each registered modality's own (help read from the
    strategy, decoder and verifier registries and the modality specs, so it never falls behind)."""
    from ponder.modalities import registry
    from ponder.search.decoding import DECODERS, LOSSY, LOSSY_OPTIONS, is_lossy
    from ponder.search.scaling import NOISE_STRATEGIES, STRATEGIES

    specs = registry.specs()
    gen = sub.add_parser("generate", help="generate with a strategy, a verifier and a decoder")
    gen.add_argument("modality", help=" | ".join(specs))
    gen.add_argument("--model", required=True, help="zoo:NAME or a local model folder")
    gen.add_argument("--prompt", required=True, help="the prompt (use $'...' for newlines in bash)")
    token_strategies = [name for name in STRATEGIES if name not in NOISE_STRATEGIES]
    gen.add_argument("--strategy", default="sample",
                     help=f"{' | '.join(token_strategies)}; diffusion models: {' | '.join(NOISE_STRATEGIES)} "
                          "(and sample, best-of-n, worst-of-n) (default: sample)")
    gen.add_argument("--n", type=int, default=1, help="number of candidates (default: 1)")
    verifiers = "; ".join(f"{s.name}: {' | '.join(s.verifiers)}" for s in specs.values() if s.verifiers)
    gen.add_argument("--verifier", default=None,
                     help=f"{verifiers}; or a,b (an ensemble of names) or a local verifier folder")
    lossless = [name for name in DECODERS if not is_lossy(name)]
    lossy_options = "; ".join(f"{d} with --option {o}={v}" for d, (o, v) in LOSSY_OPTIONS.items())
    gen.add_argument("--decoder", default="plain",
                     help=f"lossless: {' | '.join(lossless)}; LOSSY (output not distributed as plain sampling's; "
                          f"refused by --lossless): {' | '.join(sorted(LOSSY))}"
                          + (f"; {lossy_options}" if lossy_options else "")
                          + "; auto: the fastest lossless decoder measured for this workload (speed history of "
                            "`ponder bench speculative`, --option history=DIR) (default: plain)")
    gen.add_argument("--lossless", action="store_true",
                     help=f"refuse lossy decoders ({', '.join(sorted(LOSSY))} and lossy options): one error, exit 2")
    gen.add_argument("--draft", default=None, help="draft model (zoo:NAME or folder) for decoders that use one")
    gen.add_argument("--guide", default=None,
                     help="change the distribution sampled from (every strategy and decoder runs on the guided "
                          "model): cad (context-aware decoding: the model with --context, contrasted with it alone) | "
                          "uscd (selective contrast with a lame prompt where the model is uncertain) | knn (kNN-LM: "
                          "interpolate with a datastore of a corpus)")
    gen.add_argument("--context", default=None, metavar="TEXT|@FILE",
                     help="the text a context guide puts before the prompt (@FILE reads a file)")
    gen.add_argument("--guide-option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                     help="the guide's own options (cad: alpha=0.5; uscd: alpha=0.5 threshold=0.3 keep_lines=1 "
                          "lame=TEXT; knn: corpus=PATH or datastore=FILE.npz, lam=0.25 k=16 temperature=1)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]; 1 = off")
    gen.add_argument("--min-p", type=float, default=0.0, help="in [0, 1]; 0 = off")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--steps", type=int, default=None,
                     help="denoising steps per sample, for diffusion models (positive; default: the model's)")
    seen: dict[str, list[str]] = {}
    helps: dict[str, dict[str, str]] = {}  # flag -> {help text: the modalities that give it}
    for spec in specs.values():
        for option in _cli_options(spec):
            seen.setdefault(option.cli_flag, []).append(spec.name)
            helps.setdefault(option.cli_flag, {}).setdefault(option.help, []).append(spec.name)
    groups: dict[tuple[str, ...], object] = {}
    added: set[str] = set()
    for spec in specs.values():
        for option in _cli_options(spec):
            flag = option.cli_flag
            if flag in added:
                continue
            added.add(flag)
            owners = tuple(seen[flag])
            if owners not in groups:
                groups[owners] = gen.add_argument_group(f"{' and '.join(owners)} options")
            dest = "opt_" + flag[2:].replace("-", "_")
            texts = helps[flag]  # one help, or each modality's own when they differ
            text = next(iter(texts)) if len(texts) == 1 else "; ".join(
                f"{' and '.join(names)}: {help_text}" for help_text, names in texts.items())
            if option.type is bool:
                groups[owners].add_argument(flag, dest=dest, action="store_true", default=None, help=text)
            elif option.repeat:
                groups[owners].add_argument(flag, dest=dest, action="append", default=None, help=text,
                                            metavar=option.metavar or option.name.upper())
            else:
                groups[owners].add_argument(flag, dest=dest, default=None, help=text,
                                            metavar=option.metavar or option.name.upper())
    opts = gen.add_argument_group("strategy options (only the ones a strategy takes are allowed)")
    for flag, kind, text in STRATEGY_FLAGS:
        opts.add_argument(flag, type=kind, default=None, help=text)
    opts.add_argument("--calibrate", type=int, default=None, metavar="M",
                      help="score by the verifier's quantile among M of the model's own samples (InfAlign)")
    opts.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                      help="any other strategy or decoder option, one or more per flag (VALUE read as YAML: "
                           "3, 0.5, true, [1, 2], {1: beam})")
    gen.add_argument("--trust-remote-code", action="store_true", help="allow custom model code in the folder")
    gen.add_argument("--out", type=Path, default=None, help="write result.json and candidate files here")
    gen.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _cli_options(spec) -> list:
    return [o for o in spec.options if o.cli]


def _modality_options(args, spec) -> tuple[dict, dict]:
    """The modality flags given, as (load options, generate options); a flag of another modality is one
    ConfigError naming whose it is."""
    from ponder.modalities import registry

    load, generate = {}, {}
    mine = {o.cli_flag: o for o in _cli_options(spec)}
    for other in registry.specs().values():
        for option in _cli_options(other):
            flag = option.cli_flag
            value = getattr(args, "opt_" + flag[2:].replace("-", "_"), None)
            if value is None or (flag in mine and mine[flag] is not option):
                continue
            if flag not in mine:
                owners = [s.name for s in registry.specs().values() if flag in {o.cli_flag for o in _cli_options(s)}]
                raise ConfigError(f"{flag} is an option of {' and '.join(owners)} models, not {spec.name!r}")
            keywords = {option.name: True} if option.type is bool else option.from_cli(value)
            (load if option.stage == "load" else generate).update(keywords)
    return load, generate


def _request(args):
    from ponder.modalities import registry
    from ponder.request import Request

    spec = registry.get(args.modality)
    load_options, generate_options = _modality_options(args, spec)
    if args.trust_remote_code:
        load_options["trust_remote_code"] = True
    request = Request(modality=spec.name, model=args.model, prompt=args.prompt, strategy=args.strategy, n=args.n,
                      verifier=args.verifier, decoder=args.decoder, draft=args.draft, seed=args.seed,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                      max_new_tokens=args.max_new_tokens, stop=list(args.stop or []), calibrate=args.calibrate,
                      steps=args.steps, lossless=args.lossless, guide=args.guide, context=_context(args.context),
                      guide_options=_key_values(args.guide_option, "--guide-option"), load_options=load_options,
                      options={**_strategy_options(args), **generate_options})
    try:
        return request.validate()
    except ConfigError as err:  # name the flag the user typed: "--n must be ...", not "n must be ..."
        field, sep, rest = str(err).partition(" must ")
        if sep and field in REQUEST_FLAGS:
            raise ConfigError(f"{REQUEST_FLAGS[field]} must {rest}") from None
        raise


# request fields whose messages the CLI words with the flag the user typed
REQUEST_FLAGS = {name: "--" + name.replace("_", "-") for name in
                 ("n", "seed", "temperature", "top_k", "top_p", "min_p", "max_new_tokens", "calibrate", "steps")}


def cmd_generate(args) -> int:
    import ponder
    from ponder.jobs.outputs import payload_lines, write_result

    request = _request(args)  # every check that needs no model, before any model loads
    _quiet_transformers()
    model = ponder.load(request.modality, request.model, **request.load_options)
    result = ponder.generate(model, request.prompt, **request.generate_kwargs())
    payload = payload_lines(result)
    if args.out is not None:
        payload["files"] = write_result(args.out, request.to_dict(), result, timing=True)
    if args.json:
        print(json.dumps(payload))
    else:
        best = result.best
        if best is None:
            print("(abstained)")
        elif isinstance(best.output, str):
            print(best.output)
        elif args.out is not None:
            print(str(args.out / next(f for f in payload["files"] if f.startswith("best"))))
        else:
            print(payload["best"]["output"])
        c = result.compute
        scores = ", ".join("-" if x.score is None else f"{x.score:.3f}" for x in result.candidates)
        cost = f"NFE {c.nfe}, verifier calls {c.verifier_calls}" if c.nfe else f"tokens {c.tokens}"
        if c.backward_passes:
            cost += f", backward passes {c.backward_passes}"
        rtf = payload["compute"].get("real_time_factor")
        timing = f"{c.seconds:.2f}s" + ("" if rtf is None else f" (real-time factor {rtf:.3g})")
        print(f"# {len(result.candidates)} candidate(s); scores [{scores}]; model calls {c.model_calls}, "
              f"{cost}, {timing}", file=sys.stderr)
    return 0


def _tasks() -> dict:
    """Every zoo task a registered modality can sample (`ponder zoo sample NAME`)."""
    from ponder.modalities import registry

    return {name: task for spec in registry.specs().values() for name, task in spec.tasks.items()}


def cmd_zoo(args) -> int:
    from ponder import zoo

    if args.zoo_command == "list":
        rows = [{"name": e.name, "modality": e.modality, "kind": e.kind, "built": e.built,
                 "summary": e.summary, "metrics": e.card().get("metrics", {})} for e in zoo.ZOO.values()]
        if args.json:
            print(json.dumps(rows))
        else:
            name_width = max((len(r["name"]) for r in rows), default=0)
            modality_width = max((len(r["modality"]) for r in rows), default=0)
            for r in rows:
                state = "ready" if r["built"] else "not built"
                print(f"zoo:{r['name']:<{name_width}}  {r['modality']:<{modality_width}}  {r['kind']:<9} {state:<9} "
                      f"{r['summary']}")
        return 0
    if args.zoo_command == "train":
        zoo.entry(args.name)  # unknown names fail before any work
        card = zoo.train(args.name, log=lambda line: print(line, file=sys.stderr, flush=True), steps=args.steps,
                         out_dir=args.out, smoke=args.smoke)
        print(json.dumps({"name": card["name"], "metrics": card["metrics"]}))
        return 0
    # sample
    tasks = _tasks()
    name = args.name.removeprefix("zoo:")
    if name not in tasks:
        raise ConfigError(f"zoo sample knows the task(s) {', '.join(sorted(tasks)) or 'none'}, got {args.name!r}")
    rows = tasks[name](split=args.split, count=args.count, seed=args.seed, template=args.template)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r["prompt"] + r["solution"])
    return 0


def cmd_bench(args) -> int:
    from ponder import bench

    if args.list:
        for name, spec in bench.benches().items():
            print(f"{name:<16} {spec.summary}")
        return 0
    names = args.names or list(bench.benches())
    reports = [bench.run(name, quick=args.quick, plot_dir=args.plot, device=args.device) for name in names]
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
                           fuse=not args.no_fuse, max_rows=args.max_rows, ship=args.ship,
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
