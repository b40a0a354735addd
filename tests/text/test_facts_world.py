"""The facts world: deterministic, every answer written in the documents it names, entities held
out by hash, and knowledge-conflict and unseen-entity sets of 200 questions each."""

from __future__ import annotations

import json

from ponder.modalities.text.facts import World, held_out
from ponder.search.retrieval import read_corpus


def test_the_same_seed_gives_the_same_world_and_another_seed_another():
    a, b, c = World.generate(3), World.generate(3), World.generate(4)
    assert a.corpus() == b.corpus() and a.corpus() != c.corpus()
    assert len(a.people) == 400 and len(a.companies) == 120 and len(a.cities) == 60


def test_every_answer_is_written_in_the_documents_the_question_names():
    world = World.generate(0)
    docs = {d["id"]: d["text"] for d in world.corpus()}
    questions = world.questions()
    assert {q.hops for q in questions} == {1, 2} and len(questions) > 2000
    for q in questions:
        texts = " ".join(docs[d] for d in q.documents)
        assert q.answer in texts, q
        if q.hops == 2:  # the first document names the bridge entity, the second holds the answer
            bridge = q.documents[1].split("/", 1)[1]
            assert len(q.documents) == 2 and bridge in docs[q.documents[0]] and q.answer in docs[q.documents[1]]


def test_held_out_entities_follow_their_names_and_stay_out_of_the_known_corpus():
    world = World.generate(0)
    held = [name for name in world.entities() if held_out(name)]
    assert 0.03 < len(held) / len(world.entities()) < 0.2
    known_ids = {d["id"] for d in world.corpus(held=False)}
    assert not any(world.document(name)[0] in known_ids for name in held)
    assert held_out("Ada Byron") == held_out("Ada Byron")  # a name's fate does not depend on the world


def test_conflict_and_unseen_sets(tmp_path):
    world = World.generate(0)
    conflicts = world.conflicts(200)
    assert len(conflicts) == 200
    for doc, q in conflicts:
        person = world.people[q.question.split(" born?")[0].removeprefix("Where was ")] if "born" in q.question \
            else world.people[q.question.removeprefix("Which company does ").removesuffix(" work for?")]
        assert q.answer in doc["text"] and q.answer not in (person.born_in, person.employer)  # it contradicts
        assert not held_out(person.name) and q.kind == "conflict"
    unseen = world.unseen(200)
    assert len(unseen) == 200 and all(q.kind == "unseen" for q in unseen)
    folder = world.write(tmp_path / "facts")
    assert len(read_corpus(folder / "corpus.jsonl")) == len(world.entities())
    lines = (folder / "conflicts.jsonl").read_text().splitlines()
    assert len(lines) == 200 and json.loads(lines[0])["question"]["kind"] == "conflict"


def test_no_known_document_mentions_a_held_out_entity():
    world = World.generate(0)
    text = " ".join(d["text"] for d in world.corpus(held=False))
    assert not any(name in text for name in world.entities() if held_out(name))
