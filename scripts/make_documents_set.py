"""Write la_edge/faces/evaluation/data/documents.json, the data of `la-edge eval --documents`.

Deterministic (fixed seed, hand-written fact tables below): rerunning it rewrites the same file.
Each item asks a question that a passage answers. Conflicting items state a counterfactual (another
answer of the same kind: the Eiffel Tower in Rome), so an answer that follows the passage differs
from what the model knows (`memory_answer`); agreeing items state the true fact.

Sets: conflict-short (a short passage), conflict-long (the counterfactual stated once in a passage
of 300-520 words among distractor facts), conflict-multi (3-4 documents, one holds the answer),
conflict-far (the passage in the first user turn, then 3-4 unrelated turns, then the question),
agree (a short passage with the true fact).

    python scripts/make_documents_set.py [--check]   # --check: fail if the file would change
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Dict, List, Sequence, Tuple

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
from la_edge.faces.evaluation.documents import mentions  # noqa: E402 (the eval's scoring rule)

SEED = 27
OUT = os.path.join(ROOT, "la_edge", "faces", "evaluation", "data", "documents.json")
INSTRUCTION = "Answer in one short sentence."
SIZES = {"agree": 20, "conflict-long": 24, "conflict-multi": 24, "conflict-far": 24}  # conflict-short: the rest

# kind -> question, statements of the fact (one is the key sentence), details that follow it
KINDS: Dict[str, Dict[str, Sequence[str]]] = {
    "landmark": {
        "question": ["In which city is {s}?"],
        "state": ["{S} is located in {a}.", "{S} stands in the city of {a}.",
                  "{S} can be found in {a}, where it draws large crowds."],
        "detail": ["It is one of the most visited sights in the country.",
                   "Guided tours start at its main entrance every hour.",
                   "Its picture appears on many postcards and souvenirs."],
    },
    "capital": {
        "question": ["What is the capital of {s}?"],
        "state": ["The capital of {s} is {a}.", "{a} is the capital city of {s}.",
                  "The government of {s} meets in {a}, the capital."],
        "detail": ["The national parliament and most ministries have their offices there.",
                   "Many embassies are found in its central districts.",
                   "It is also the largest centre of trade in the country."],
    },
    "symbol": {
        "question": ["What is the chemical symbol of {s}?"],
        "state": ["The chemical symbol of {s} is {a}.", "In the periodic table, {s} is written with the symbol {a}.",
                  "Chemists write {s} as {a} in their formulas."],
        "detail": ["Students learn the symbol in their first chemistry lessons.",
                   "The same symbol is used in every language.",
                   "It appears in the formula of every compound that contains the element."],
    },
    "author": {
        "question": ["Who wrote {s}?"],
        "state": ["{s} was written by {a}.", "{a} is the author of {s}.", "{a} wrote {s}."],
        "detail": ["The work has been translated into many languages.", "It is still read in schools today.",
                   "Several films have been based on the story."],
    },
    "painter": {
        "question": ["Who painted {s}?"],
        "state": ["{S} was painted by {a}.", "{a} is the painter of {s}.", "{a} painted {s}."],
        "detail": ["The painting is among the most famous works of art in the world.",
                   "Crowds gather in front of it every day in the gallery.",
                   "Copies of the picture are sold in museum shops everywhere."],
    },
    "inventor": {
        "question": ["Who invented {s}?"],
        "state": ["{S} was invented by {a}.", "{a} is known as the inventor of {s}.", "{a} invented {s}."],
        "detail": ["The invention changed daily life within a few decades.",
                   "Early models of it are kept in science museums.",
                   "School books often tell the story of how it was made."],
    },
    "currency": {
        "question": ["What is the currency of {s}?"],
        "state": ["The currency of {s} is the {a}.", "In {s}, people pay with the {a}.",
                  "Prices in {s} are given in the {a}, the national currency."],
        "detail": ["Coins and banknotes are issued by the central bank.",
                   "Visitors can change money at banks and at the airport.",
                   "Card payments are accepted in most shops."],
    },
    "language": {
        "question": ["What is the official language of {s}?"],
        "state": ["The official language of {s} is {a}.", "Most people in {s} speak {a}, the official language.",
                  "In {s}, laws and school lessons are written in {a}, the official language."],
        "detail": ["Newspapers and television use it every day.", "Children learn to read and write in it at school.",
                   "Road signs and official forms are printed in it."],
    },
}

# kind -> (subject, answer, aliases); none of these answers is written in a subject or question
FACTS: Dict[str, List[Tuple[str, str, List[str]]]] = {
    "landmark": [
        ("the Eiffel Tower", "Paris", []), ("the Colosseum", "Rome", []), ("Big Ben", "London", []),
        ("the Statue of Liberty", "New York", ["New York City"]), ("the Taj Mahal", "Agra", []),
        ("the Brandenburg Gate", "Berlin", []), ("the Kremlin", "Moscow", []),
        ("the Golden Gate Bridge", "San Francisco", []), ("the Sagrada Familia", "Barcelona", []),
        ("the Acropolis", "Athens", []), ("the Burj Khalifa", "Dubai", []), ("the Forbidden City", "Beijing", []),
        ("the Christ the Redeemer statue", "Rio de Janeiro", ["Rio"]), ("the Space Needle", "Seattle", []),
        ("the CN Tower", "Toronto", []), ("the Hagia Sophia", "Istanbul", []),
        ("the Petronas Towers", "Kuala Lumpur", []), ("the Alhambra", "Granada", []),
        ("the Little Mermaid statue", "Copenhagen", []), ("the Atomium", "Brussels", []),
        ("the Hollywood sign", "Los Angeles", []), ("the Gateway Arch", "St. Louis", ["Saint Louis"]),
        ("the Charles Bridge", "Prague", []), ("the Rijksmuseum", "Amsterdam", []),
    ],
    "capital": [
        ("France", "Paris", []), ("Japan", "Tokyo", []), ("Italy", "Rome", []), ("Germany", "Berlin", []),
        ("Spain", "Madrid", []), ("Canada", "Ottawa", []), ("Australia", "Canberra", []), ("Egypt", "Cairo", []),
        ("Russia", "Moscow", []), ("China", "Beijing", []), ("Brazil", "Brasília", ["Brasilia"]),
        ("Kenya", "Nairobi", []), ("Norway", "Oslo", []), ("Greece", "Athens", []), ("Portugal", "Lisbon", []),
        ("Argentina", "Buenos Aires", []), ("India", "New Delhi", ["Delhi"]), ("Sweden", "Stockholm", []),
        ("Ireland", "Dublin", []), ("Poland", "Warsaw", []), ("Austria", "Vienna", []), ("Turkey", "Ankara", []),
        ("Thailand", "Bangkok", []), ("Peru", "Lima", []), ("South Korea", "Seoul", []),
    ],
    "symbol": [
        ("gold", "Au", []), ("silver", "Ag", []), ("iron", "Fe", []), ("sodium", "Na", []), ("copper", "Cu", []),
        ("lead", "Pb", []), ("mercury", "Hg", []), ("tin", "Sn", []), ("zinc", "Zn", []), ("chlorine", "Cl", []),
        ("magnesium", "Mg", []), ("nickel", "Ni", []), ("platinum", "Pt", []), ("calcium", "Ca", []),
    ],
    "author": [
        ("Romeo and Juliet", "William Shakespeare", ["Shakespeare"]),
        ("Pride and Prejudice", "Jane Austen", ["Austen"]), ("Nineteen Eighty-Four", "George Orwell", ["Orwell"]),
        ("Don Quixote", "Miguel de Cervantes", ["Cervantes"]), ("War and Peace", "Leo Tolstoy", ["Tolstoy"]),
        ("The Odyssey", "Homer", []),
        ("Harry Potter and the Philosopher's Stone", "J. K. Rowling", ["Rowling"]),
        ("Moby-Dick", "Herman Melville", ["Melville"]), ("Les Misérables", "Victor Hugo", ["Hugo"]),
        ("Oliver Twist", "Charles Dickens", ["Dickens"]),
        ("The Old Man and the Sea", "Ernest Hemingway", ["Hemingway"]),
        ("Crime and Punishment", "Fyodor Dostoevsky", ["Dostoevsky", "Dostoyevsky"]),
        ("The Adventures of Tom Sawyer", "Mark Twain", ["Twain"]), ("Frankenstein", "Mary Shelley", ["Shelley"]),
        ("The Divine Comedy", "Dante Alighieri", ["Dante"]), ("Faust", "Johann Wolfgang von Goethe", ["Goethe"]),
    ],
    "painter": [
        ("the Mona Lisa", "Leonardo da Vinci", ["Leonardo", "da Vinci"]),
        ("The Starry Night", "Vincent van Gogh", ["van Gogh"]), ("The Scream", "Edvard Munch", ["Munch"]),
        ("Guernica", "Pablo Picasso", ["Picasso"]), ("the ceiling of the Sistine Chapel", "Michelangelo", []),
        ("The Night Watch", "Rembrandt", []), ("Girl with a Pearl Earring", "Johannes Vermeer", ["Vermeer"]),
        ("The Persistence of Memory", "Salvador Dalí", ["Dalí", "Dali"]),
        ("The Birth of Venus", "Sandro Botticelli", ["Botticelli"]), ("Water Lilies", "Claude Monet", ["Monet"]),
        ("American Gothic", "Grant Wood", []),
    ],
    "inventor": [
        ("the telephone", "Alexander Graham Bell", ["Graham Bell", "Bell"]),
        ("the light bulb", "Thomas Edison", ["Edison"]), ("the printing press", "Johannes Gutenberg", ["Gutenberg"]),
        ("the World Wide Web", "Tim Berners-Lee", ["Berners-Lee"]), ("dynamite", "Alfred Nobel", ["Nobel"]),
        ("the radio", "Guglielmo Marconi", ["Marconi"]), ("the airplane", "the Wright brothers", ["Wright"]),
        ("the first polio vaccine", "Jonas Salk", ["Salk"]), ("the electric battery", "Alessandro Volta", ["Volta"]),
        ("the cotton gin", "Eli Whitney", ["Whitney"]),
    ],
    "currency": [
        ("Japan", "yen", []), ("the United Kingdom", "pound sterling", ["pound"]), ("India", "rupee", []),
        ("Russia", "ruble", ["rouble"]), ("China", "yuan", ["renminbi"]), ("Mexico", "peso", []),
        ("South Africa", "rand", []), ("Switzerland", "Swiss franc", ["franc"]), ("Poland", "złoty", ["zloty"]),
        ("Thailand", "baht", []), ("Turkey", "lira", []), ("Sweden", "krona", []),
    ],
    "language": [
        ("Brazil", "Portuguese", []), ("Austria", "German", []), ("Egypt", "Arabic", []),
        ("Iran", "Persian", ["Farsi"]), ("the Netherlands", "Dutch", []), ("Israel", "Hebrew", []),
        ("Argentina", "Spanish", []), ("Greece", "Greek", []), ("Hungary", "Hungarian", []),
        ("Japan", "Japanese", []), ("Vietnam", "Vietnamese", []), ("Finland", "Finnish", []),
    ],
}
CITY_KINDS = ("landmark", "capital")  # these two draw counterfactual cities from one pool

# neutral sentences for the long passages
FILLER = [
    "The weather in the region is mild in spring and autumn, with cool evenings.",
    "Local markets sell fresh bread, cheese and fruit every morning except Sunday.",
    "Most museums offer reduced tickets for students and free entry for children.",
    "Trains between the larger towns run every half hour during the day.",
    "The old harbour was rebuilt after a storm damaged its walls.",
    "A popular festival each summer fills the streets with music and food stalls.",
    "Many visitors rent bicycles to explore the parks along the river.",
    "The national library keeps more than two million books and maps.",
    "Several universities in the area are known for engineering and medicine.",
    "Tap water is safe to drink, and public fountains are common in the squares.",
    "Shops usually close early on Saturdays and stay closed on public holidays.",
    "The main railway station was opened more than a century ago.",
    "Fishing was once the most important trade along the coast.",
    "The botanical garden grows plants from every continent in its glass houses.",
    "Travellers are advised to book hotels early during the summer months.",
    "A narrow mountain road connects the valley to the villages in the north.",
    "The local football club has won the national cup three times.",
    "Public buses accept cards as well as paper tickets bought at kiosks.",
    "An annual marathon follows a route past the oldest bridges in town.",
    "The history museum displays coins, tools and pottery found in the area.",
    "Summer evenings are long, and cafes keep their terraces open late.",
    "The zoo is known for its breeding programme for rare birds.",
    "Several ferries a day link the mainland with the nearby islands.",
    "The cathedral bells ring at noon and again at six in the evening.",
    "Street names are written in two languages in the old quarter.",
    "A small observatory on the hill is open to the public on clear nights.",
    "Local cooks are proud of a stew made with beans, onions and smoked meat.",
    "The city council plans to add more cycle lanes over the next five years.",
    "In winter, an ice rink is set up in the main square.",
    "The river floods only rarely, thanks to a system of dams built upstream.",
]

# unrelated turns for the conversation set: (user, assistant)
CHAT = [
    ("Can you suggest a quick breakfast?", "Oatmeal with fruit, or toast with eggs, takes about ten minutes."),
    ("How do I keep basil fresh?", "Keep the stems in a glass of water on the counter, like cut flowers."),
    ("What is a good stretch after running?", "A standing calf stretch against a wall, held for thirty seconds "
                                              "on each leg."),
    ("How long should I boil an egg for a soft yolk?", "About six minutes in boiling water, then cool it in "
                                                       "cold water."),
    ("Give me a name for a grey cat.", "How about Smokey, Pebble or Ash?"),
    ("How often should I water a cactus?", "Every two to three weeks in summer, and about once a month in winter."),
    ("What is a polite way to decline a meeting?", "Thank them for the invitation, say you cannot attend, and "
                                                   "offer another time."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, dim the lights and put your phone away an hour "
                                      "before bed."),
    ("Suggest a board game for four players.", "Try a cooperative game, or a card game that everyone already "
                                               "knows."),
    ("How do I remove a coffee stain from a shirt?", "Rinse it with cold water from the back, then rub in a "
                                                     "little dish soap before washing."),
    ("What should I pack for a day hike?", "Water, a snack, a map, sun cream and a light rain jacket."),
    ("How do I write a short thank-you note?", "Write one sentence on what they did and one on how it helped you."),
]
FIRST_TURN = "Please read this document carefully. I will ask you about it later."
FIRST_REPLY = "I have read the document. Ask me about it whenever you are ready."


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(template: str, subject: str, answer: str) -> str:
    return _cap(template.format(s=subject, S=_cap(subject), a=answer))


def _facts() -> List[Dict[str, object]]:
    out = []
    for kind, rows in FACTS.items():
        for subject, answer, aliases in rows:
            out.append({"kind": kind, "subject": subject, "answer": answer, "aliases": list(aliases)})
    return out


def _names(fact: Dict[str, object]) -> List[str]:
    return [fact["answer"]] + list(fact["aliases"])


def _pool(facts: List[Dict[str, object]], kind: str) -> List[Tuple[str, List[str]]]:
    """Distinct answers (with aliases) a counterfactual of this kind may take."""
    kinds = CITY_KINDS if kind in CITY_KINDS else (kind,)
    seen: Dict[str, List[str]] = {}
    for f in facts:
        if f["kind"] in kinds and f["answer"] not in seen:
            seen[f["answer"]] = list(f["aliases"])
    return sorted(seen.items())


def _counterfactual(rng: random.Random, facts, fact) -> Tuple[str, List[str]]:
    truth = _names(fact)
    options = [(a, al) for a, al in _pool(facts, fact["kind"])
               if not mentions(" / ".join([a] + al), truth) and not mentions(" / ".join(truth), [a] + al)]
    return rng.choice(options)


def _true_sentences(rng: random.Random, facts, fact, avoid: Sequence[str], kinds: Sequence[str] = ()) -> List[str]:
    """One true statement per other fact (of `kinds`, or any), none naming the `avoid` answers."""
    out = []
    for f in facts:
        if f is fact or (kinds and f["kind"] not in kinds):
            continue
        text = _say(rng.choice(KINDS[f["kind"]]["state"]), f["subject"], f["answer"])
        if not mentions(text, avoid):
            out.append(text)
    rng.shuffle(out)
    return out


def _short(rng: random.Random, fact, answer: str) -> str:
    k = KINDS[fact["kind"]]
    return f"{_say(rng.choice(k['state']), fact['subject'], answer)} {rng.choice(k['detail'])}"


def _long(rng: random.Random, facts, fact, answer: str, avoid: Sequence[str]) -> str:
    key = _say(rng.choice(KINDS[fact["kind"]]["state"]), fact["subject"], answer)
    others = _true_sentences(rng, facts, fact, avoid)[:12]
    filler = rng.sample([s for s in FILLER if not mentions(s, avoid)], 18)
    body = others + filler
    rng.shuffle(body)
    at = rng.randint(len(body) * 3 // 10, len(body) * 7 // 10)
    body.insert(at, key)
    paras = [" ".join(body[i:i + 6]) for i in range(0, len(body), 6)]
    text = "Notes for travellers and readers, collected from several guides.\n\n" + "\n\n".join(paras)
    words = len(text.split())
    assert 300 <= words <= 520, (fact["subject"], words)
    return text


def _multi(rng: random.Random, facts, fact, answer: str, avoid: Sequence[str], n_docs: int) -> List[str]:
    related = CITY_KINDS if fact["kind"] in CITY_KINDS else (fact["kind"],)
    true = _true_sentences(rng, facts, fact, avoid, related)
    docs = [" ".join(true[2 * i:2 * i + 2]) for i in range(n_docs - 1)]
    assert all(d.count(".") >= 2 for d in docs), fact["subject"]
    docs.insert(rng.randrange(n_docs), _short(rng, fact, answer))
    return docs


def build() -> Dict[str, object]:
    rng = random.Random(SEED)
    facts = _facts()
    order = list(range(len(facts)))
    rng.shuffle(order)
    sets, start = {}, 0
    for name in ("agree", "conflict-long", "conflict-multi", "conflict-far"):
        sets[name] = order[start:start + SIZES[name]]
        start += SIZES[name]
    sets["conflict-short"] = order[start:]
    items = []
    for name in ("conflict-short", "conflict-long", "conflict-multi", "conflict-far", "agree"):
        for n, idx in enumerate(sets[name], 1):
            fact = facts[idx]
            truth = _names(fact)
            question = _cap(rng.choice(KINDS[fact["kind"]]["question"]).format(s=fact["subject"]))
            if name == "agree":
                answer, aliases = fact["answer"], list(fact["aliases"])
            else:
                answer, aliases = _counterfactual(rng, facts, fact)
            avoid = truth + [answer] + aliases
            assert not mentions(question, avoid), question
            item = {"id": f"{name}-{n:02d}", "set": name, "kind": fact["kind"], "question": question}
            if name == "conflict-long":
                item["documents"] = [_long(rng, facts, fact, answer, avoid)]
            elif name == "conflict-multi":
                item["documents"] = _multi(rng, facts, fact, answer, avoid, 3 + n % 2)
            else:
                item["documents"] = [_short(rng, fact, answer)]
            if name == "conflict-far":
                chat = [c for c in CHAT if not mentions(" ".join(c), avoid)]
                turns = [{"role": "user", "content": FIRST_TURN}, {"role": "assistant", "content": FIRST_REPLY}]
                for user, reply in rng.sample(chat, 3 + n % 2):
                    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
                item["turns"] = turns  # the documents go in turns[0]; the question follows the last turn
            item.update(answer=answer, aliases=aliases, memory_answer=fact["answer"],
                        memory_aliases=list(fact["aliases"]))
            items.append(item)
    return {
        "description": "Questions answered by a passage, for `la-edge eval --documents` (context-aware decoding). "
                       "Conflicting sets state a counterfactual; 'agree' states the true fact. Written for la-edge "
                       "by scripts/make_documents_set.py; licence: MIT, as the project.",
        "instruction": INSTRUCTION,
        "sets": {
            "conflict-short": "a short passage states a counterfactual",
            "conflict-long": "the counterfactual stated once in a passage of 300-520 words among distractor facts",
            "conflict-multi": "3-4 documents, one holds the answer, the others true facts on related topics",
            "conflict-far": "the passage in the first user turn, then 3-4 unrelated turns, then the question",
            "agree": "a short passage states the true fact (the model's memory agrees)",
        },
        "items": items,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if documents.json differs from what this writes")
    args = ap.parse_args(argv)
    doc = build()
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    path = os.path.normpath(OUT)
    if args.check:
        with open(path, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{path}: {'up to date' if same else 'differs: rerun scripts/make_documents_set.py'}")
        return 0 if same else 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path}: {len(doc['items'])} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
