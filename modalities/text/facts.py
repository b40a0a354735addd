"""The facts world: a generated world of people, companies and cities, rendered as short documents,
with single-hop and multi-hop questions that have exact answers — the offline task on which context
and retrieval methods (CAD, kNN-LM, RAG) are measured (the `zoo:facts` LM is trained on part of it).

Everything follows from one seed. Entities are held out by a hash of their name (`HELD_OUT_PERCENT`),
so a held-out entity is the same in every run; a known entity's attributes name only known entities,
so no known document mentions a held-out one and the model never trains on one.
Question sets:

- `questions(entities)`: single-hop (an attribute of one entity) and multi-hop (a person's company's
  city, founder or founding year), each with the documents that answer it;
- `conflicts(count)`: a known entity's document with one attribute edited — the document contradicts
  what a model trained on the world memorised; the right answer is the document's;
- `unseen(count)`: questions about held-out entities, answerable only from their documents.

A corpus is written as JSONL ``{"id", "text"}`` (`ponder.search.retrieval.corpus`), questions as JSONL
``{"id", "question", "answer", "hops", "documents", "kind"}``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from ponder.errors import check_int

HELD_OUT_PERCENT = 10  # entities whose name hashes below this are never trained on
FIRST = ["Ada", "Bram", "Cora", "Dario", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lev", "Mila",
         "Nico", "Oona", "Pavel", "Rhea", "Soren", "Tess", "Ugo", "Vera", "Wim", "Yara", "Zeno"]
LAST = ["Abbott", "Brandt", "Castell", "Dorn", "Ekberg", "Falk", "Gorin", "Holm", "Ivers", "Jansen", "Kovac",
        "Lind", "Moreau", "Nyland", "Okafor", "Prade", "Quist", "Rask", "Sato", "Thorne", "Ulm", "Varga", "Wren"]
CITY_PARTS = (["Ash", "Bel", "Cor", "Dun", "El", "Fair", "Glen", "Hal", "Iron", "Kings", "Lake", "Mar", "North",
               "Oak", "Pine", "Red", "Stone", "West"], ["ford", "haven", "dale", "mouth", "field", "port", "wick",
                                                       "ton", "bury", "gate"])
COMPANY_PARTS = (["Acme", "Borealis", "Cobalt", "Dynamo", "Ember", "Fulcrum", "Granite", "Helix", "Ion", "Juniper",
                  "Keystone", "Lumen", "Meridian", "Nimbus", "Orbit", "Pioneer", "Quartz", "Radiant", "Summit",
                  "Tidal"], ["Works", "Labs", "Industries", "Systems", "Foods", "Motors", "Textiles", "Robotics"])
COUNTRIES = ["Norland", "Estoria", "Valmar", "Quenland", "Sorvia", "Taloria"]
PROFESSIONS = ["engineer", "painter", "chemist", "pilot", "teacher", "architect", "baker", "surgeon", "poet", "judge"]


def held_out(name: str) -> bool:
    """Whether entity `name` is held out (by hash: the same in every run, whatever the seed)."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


@dataclass(frozen=True)
class City:
    name: str
    country: str


@dataclass(frozen=True)
class Company:
    name: str
    city: str  # headquarters
    founded: int
    founder: str  # a person's name


@dataclass(frozen=True)
class Person:
    name: str
    born_in: str
    birth_year: int
    profession: str
    employer: str  # a company's name


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    hops: int
    documents: tuple[str, ...]  # ids of the documents that answer it
    kind: str = "plain"  # plain | conflict | unseen

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "answer": self.answer, "hops": self.hops,
                "documents": list(self.documents), "kind": self.kind}


@dataclass
class World:
    cities: dict[str, City] = field(default_factory=dict)
    companies: dict[str, Company] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def generate(cls, seed: int = 0, *, people: int = 400, companies: int = 120, cities: int = 60) -> World:
        """A world of the given sizes; the same seed gives the same world."""
        for name, value in (("people", people), ("companies", companies), ("cities", cities)):
            check_int(name, value)
        rng = random.Random(seed)
        world = cls(seed=seed)
        names = _unique(rng, cities, lambda: rng.choice(CITY_PARTS[0]) + rng.choice(CITY_PARTS[1]))
        for name in names:
            world.cities[name] = City(name, rng.choice(COUNTRIES))
        person_names = _unique(rng, people, lambda: f"{rng.choice(FIRST)} {rng.choice(LAST)}")
        company_names = _unique(rng, companies,
                                lambda: f"{rng.choice(COMPANY_PARTS[0])} {rng.choice(COMPANY_PARTS[1])}")
        # a known entity names only known ones, so no training text ever mentions a held-out entity
        known = {kind: [n for n in pool if not held_out(n)] or pool
                 for kind, pool in (("city", names), ("person", person_names), ("company", company_names))}

        def pick(kind: str, pool: list[str], for_name: str) -> str:
            return rng.choice(pool if held_out(for_name) else known[kind])

        for name in company_names:
            world.companies[name] = Company(name, pick("city", names, name), rng.randint(1850, 2015),
                                            pick("person", person_names, name))
        for name in person_names:
            world.people[name] = Person(name, pick("city", names, name), rng.randint(1930, 2004),
                                        rng.choice(PROFESSIONS), pick("company", company_names, name))
        return world

    # ---- documents --------------------------------------------------------------------------------

    def document(self, name: str) -> tuple[str, str]:
        """(id, text) of the document about entity `name`."""
        if name in self.people:
            p = self.people[name]
            return f"person/{name}", (f"{p.name} was born in {p.born_in} in {p.birth_year}. {p.name} is a "
                                      f"{p.profession} and works for {p.employer}.")
        if name in self.companies:
            c = self.companies[name]
            return f"company/{name}", (f"{c.name} was founded in {c.founded} by {c.founder}. Its headquarters are "
                                       f"in {c.city}.")
        c = self.cities[name]
        return f"city/{name}", f"{c.name} is a city in {c.country}."

    def entities(self) -> list[str]:
        return [*self.people, *self.companies, *self.cities]

    def corpus(self, *, held: bool | None = None) -> list[dict]:
        """Every entity's document as {id, text}; `held`: only held-out (True) or only known (False)."""
        return [dict(zip(("id", "text"), self.document(name))) for name in self.entities()
                if held is None or held_out(name) == held]

    # ---- questions --------------------------------------------------------------------------------

    def questions(self, names: list[str] | None = None) -> list[Question]:
        """Single-hop questions about each named entity, and multi-hop ones through each person's
        employer (default: every entity)."""
        out = []
        for name in names if names is not None else self.entities():
            out += self._single(name)
            if name in self.people:
                out += self._multi(self.people[name])
        return out

    def _single(self, name: str) -> list[Question]:
        doc = self.document(name)[0]
        if name in self.people:
            p = self.people[name]
            return [Question(f"{doc}/born_in", f"Where was {name} born?", p.born_in, 1, (doc,)),
                    Question(f"{doc}/birth_year", f"In which year was {name} born?", str(p.birth_year), 1, (doc,)),
                    Question(f"{doc}/employer", f"Which company does {name} work for?", p.employer, 1, (doc,))]
        if name in self.companies:
            c = self.companies[name]
            return [Question(f"{doc}/city", f"Where are the headquarters of {name}?", c.city, 1, (doc,)),
                    Question(f"{doc}/founded", f"In which year was {name} founded?", str(c.founded), 1, (doc,)),
                    Question(f"{doc}/founder", f"Who founded {name}?", c.founder, 1, (doc,))]
        c = self.cities[name]
        return [Question(f"{doc}/country", f"In which country is {name}?", c.country, 1, (doc,))]

    def _multi(self, p: Person) -> list[Question]:
        c = self.companies[p.employer]
        docs = (self.document(p.name)[0], self.document(c.name)[0])
        base = f"{docs[0]}/employer"
        return [Question(f"{base}/city", f"In which city are the headquarters of the company {p.name} works for?",
                         c.city, 2, docs),
                Question(f"{base}/founder", f"Who founded the company {p.name} works for?", c.founder, 2, docs),
                Question(f"{base}/country", f"In which country is the city where {p.name} was born?",
                         self.cities[p.born_in].country, 2, (docs[0], self.document(p.born_in)[0]))]

    def conflicts(self, count: int = 200, seed: int = 1) -> list[tuple[dict, Question]]:
        """`count` (edited document, question) pairs about known people: the document moves the
        person's birthplace or employer elsewhere; the answer is what the edited document says."""
        rng = random.Random(seed)
        known = [p for p in self.people.values() if not held_out(p.name)]
        out = []
        for index in range(count):
            p = known[index % len(known)]
            if index % 2 == 0:
                city = rng.choice([c for c in self.cities if c != p.born_in])
                edited, question, answer = replace(p, born_in=city), f"Where was {p.name} born?", city
                what = "born_in"
            else:
                company = rng.choice([c for c in self.companies if c != p.employer])
                edited = replace(p, employer=company)
                question, answer, what = f"Which company does {p.name} work for?", company, "employer"
            world = World(self.cities, self.companies, {**self.people, p.name: edited}, self.seed)
            doc_id, text = world.document(p.name)
            doc = {"id": f"edited/{index}/{doc_id}", "text": text}
            out.append((doc, Question(f"conflict/{index}/{what}", question, answer, 1, (doc["id"],), "conflict")))
        return out

    def unseen(self, count: int = 200) -> list[Question]:
        """Up to `count` single-hop questions about held-out entities (answerable from their documents)."""
        held = [name for name in self.entities() if held_out(name)]
        return [replace(q, kind="unseen") for q in self.questions(held)[:count]]

    def write(self, folder: str | Path) -> Path:
        """The world as files: world.json, corpus.jsonl (every document), questions.jsonl,
        conflicts.jsonl ({"document", "question"} lines) and unseen.jsonl."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "world.json").write_text(json.dumps({"seed": self.seed, "people": len(self.people),
                                                       "companies": len(self.companies),
                                                       "cities": len(self.cities)}) + "\n")
        _jsonl(folder / "corpus.jsonl", self.corpus())
        _jsonl(folder / "questions.jsonl", [q.to_dict() for q in self.questions()])
        _jsonl(folder / "conflicts.jsonl", [{"document": d, "question": q.to_dict()} for d, q in self.conflicts()])
        _jsonl(folder / "unseen.jsonl", [q.to_dict() for q in self.unseen()])
        return folder


def _unique(rng: random.Random, count: int, make) -> list[str]:
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < count:
        seen.setdefault(make(), None)
        tries += 1
        if tries > 200 * count:
            raise ValueError(f"cannot draw {count} distinct names from the name lists")
    return list(seen)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ---- the prompts the zoo model is trained on and measured with ---------------------------------


def closed_book_prompt(question: str) -> str:
    """A question alone (the model answers from what it memorised)."""
    return f"Question: {question}\nAnswer:"


def reading_prompt(documents: list[str], question: str) -> str:
    """Documents, then the question (the model reads the answer from them)."""
    return "".join(f"Document: {d}\n" for d in documents) + closed_book_prompt(question)


def answer_of(output: str) -> str:
    """The answer a completion gives: its first line, stripped (and a final full stop dropped)."""
    line = output.strip().splitlines()[0].strip() if output.strip() else ""
    return line[:-1] if line.endswith(".") else line


__all__ = ["Question", "World", "answer_of", "closed_book_prompt", "held_out", "reading_prompt"]
