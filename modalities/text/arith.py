"""The `arith` zoo task: multi-step integer arithmetic written as short step-by-step solutions.

A problem is an expression over ``+ - *`` with 2–4 operators. Its solution evaluates one operator
per line (all ``*`` first, left to right, then ``+``/``-`` left to right) and ends in an answer line.
Two templates share the same problems:

``Q:`` (steps) — each line is the one operation just done::

    Q: 37+48*2-19
    48*2=96
    37+96=133
    133-19=114
    A: 114

``R:`` (rewrite, copy-heavy) — each line rewrites the whole remaining expression, so most of every
line repeats a span already in the prompt or the line before; it is the prompt set for train-free
drafters (prompt lookup, CopySpec)::

    R: 37+48*2-19
    =37+96-19
    =133-19
    =114
    A: 114

Splits never overlap: a problem belongs to the held-out split when the SHA-1 of its expression
falls in the held-out bucket (1 in 10), and the train generator rejects every such problem, so no
held-out expression is ever trained on, in either template.

Everything here is plain Python (no torch), seeded, and cheap: the generator is the data set.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

TEMPLATES = ("Q", "R")  # steps, rewrite (copy-heavy)
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10  # 1 in HELDOUT_BUCKETS expressions is held out

_EXPR_RE = re.compile(r"^\s*([QR]):\s*([0-9+\-*]+)\s*$")
_ANSWER_RE = re.compile(r"A:\s*(-?\d+)")
_STEP_RE = re.compile(r"^=?\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)$")


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: operand list, operator list, and its template."""

    numbers: tuple[int, ...]
    ops: tuple[str, ...]
    template: str = "Q"

    @property
    def expression(self) -> str:
        out = str(self.numbers[0])
        for op, num in zip(self.ops, self.numbers[1:]):
            out += f"{op}{num}"
        return out

    @property
    def prompt(self) -> str:
        return f"{self.template}: {self.expression}\n"

    @property
    def split(self) -> str:
        return split_of(self.expression)

    def steps(self) -> list[tuple[tuple[int, ...], tuple[str, ...], str]]:
        """Evaluate one operator at a time.

        Returns, per step, the remaining (numbers, ops) after the step and the step's
        ``a<op>b=c`` text.
        """
        nums, ops = list(self.numbers), list(self.ops)
        out = []
        while ops:
            i = ops.index("*") if "*" in ops else 0
            a, b, op = nums[i], nums[i + 1], ops[i]
            c = _apply(a, op, b)
            nums[i : i + 2] = [c]
            del ops[i]
            out.append((tuple(nums), tuple(ops), f"{a}{op}{b}={c}"))
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][0][0]

    def solution(self) -> str:
        """The reference completion that follows ``prompt`` (without the end-of-sequence token)."""
        lines = []
        for nums, ops, text in self.steps():
            if self.template == "Q":
                lines.append(text)
            else:
                lines.append("=" + Problem(nums, ops).expression)
        lines.append(f"A: {self.answer}")
        return "\n".join(lines) + "\n"

    def with_template(self, template: str) -> Problem:
        return Problem(self.numbers, self.ops, template)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def split_of(expression: str) -> str:
    """Which split an expression belongs to; a pure function of the expression text."""
    digest = hashlib.sha1(expression.encode()).digest()
    return "heldout" if digest[0] % HELDOUT_BUCKETS == 0 else "train"


@dataclass
class ArithConfig:
    """Difficulty knobs of the generator (the recipe in the zoo card records them)."""

    min_ops: int = 2  # fewest operators per problem
    max_ops: int = 4  # most operators per problem
    max_addend: int = 99  # operands of + and - are drawn from [1, max_addend]
    max_factor: int = 9  # right operand of * is drawn from [2, max_factor]
    mul_prob: float = 0.35  # chance that an operator is *
    rewrite_prob: float = 0.25  # chance a training problem uses the copy-heavy R template
    templates: tuple[str, ...] = field(default=TEMPLATES)


def random_problem(rng: random.Random, cfg: ArithConfig, template: str = "Q") -> Problem:
    n_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    ops = tuple("*" if rng.random() < cfg.mul_prob else rng.choice("+-") for _ in range(n_ops))
    numbers = [rng.randint(1, cfg.max_addend)]
    for op in ops:
        numbers.append(rng.randint(2, cfg.max_factor) if op == "*" else rng.randint(1, cfg.max_addend))
    return Problem(tuple(numbers), ops, template)


def problems(split: str, count: int, seed: int = 0, template: str | None = None,
             cfg: ArithConfig | None = None) -> list[Problem]:
    """`count` distinct problems of one split, deterministic in `seed`.

    template: "Q", "R", or None to mix them as in training (R with `cfg.rewrite_prob`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if template is not None and template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; allowed: {', '.join(TEMPLATES)}")
    cfg = cfg or ArithConfig()
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < count:
        tpl = template or ("R" if rng.random() < cfg.rewrite_prob else "Q")
        p = random_problem(rng, cfg, tpl)
        if p.split != split or p.expression in seen:
            continue
        seen.add(p.expression)
        out.append(p)
    return out


def train_stream(seed: int, cfg: ArithConfig | None = None):
    """Endless stream of training problems (held-out expressions never appear)."""
    cfg = cfg or ArithConfig()
    rng = random.Random(f"arith-stream-{seed}")
    while True:
        tpl = "R" if rng.random() < cfg.rewrite_prob else "Q"
        p = random_problem(rng, cfg, tpl)
        if p.split == "train":
            yield p


def parse_prompt(prompt: str) -> Problem | None:
    """Recover the Problem from a prompt like ``"Q: 3+4*2\\n"``; None if it is not one."""
    m = _EXPR_RE.match(prompt.strip("\n"))
    if not m:
        return None
    template, expr = m.groups()
    parts = re.findall(r"\d+|[+\-*]", expr)
    if len(parts) < 3 or len(parts) % 2 == 0:
        return None
    try:
        numbers = tuple(int(x) for x in parts[0::2])
    except ValueError:
        return None
    ops = tuple(parts[1::2])
    if any(op not in "+-*" for op in ops):
        return None
    return Problem(numbers, ops, template)


def extract_answer(text: str) -> int | None:
    """The integer on the first ``A:`` line of a completion, or None."""
    m = _ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def step_labels(prompt: str, completion: str) -> list[bool]:
    """Per solution line: is it correct, and are all lines before it correct?

    Used to label process-verifier training data and to check a PRM. A line is correct when it
    matches the reference line at that position (the order of operations is fixed), and the answer
    line when it states the true answer.
    """
    problem = parse_prompt(prompt)
    lines = [ln for ln in completion.split("\n") if ln.strip()]
    if problem is None:
        return [False] * len(lines)
    ref = problem.solution().strip("\n").split("\n")
    labels, ok = [], True
    for i, line in enumerate(lines):
        ok = ok and i < len(ref) and line.strip() == ref[i]
        labels.append(ok)
    return labels


def is_correct(prompt: str, completion: str) -> bool:
    problem = parse_prompt(prompt)
    return problem is not None and extract_answer(completion) == problem.answer


# ---- character tokenizer ------------------------------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Every printable ASCII character, so any user prompt tokenises (unseen ones just carry no skill).
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast` (BOS prepended, EOS = ``</s>``).

    Saved with `save_pretrained`, it loads back through `AutoTokenizer` like any user's tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
