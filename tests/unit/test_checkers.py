"""The offline checkers on hand-written answers: each one passes one and fails another."""

import pytest

from la_edge.faces.evaluation import checkers as c
from la_edge.faces.evaluation.runner import letter_scores, load_preferences, load_tasks, mc_prompt

CHILD = "The sun is a big ball of fire. It is hot. It gives us light. We see it in the day."
ADULT = ("Photosynthesis is a biochemical process whereby chlorophyll-containing organisms convert "
         "electromagnetic radiation into chemical energy, subsequently synthesizing carbohydrates.")


def test_counts():
    assert c.count_words("Don't stop, it's 3 o'clock!") == 5
    assert c.count_sentences("One. Two! Three?\n- four") == 4
    assert c.count_sentences("Pi is 3.14 exactly.") == 1
    assert [c.count_syllables(w) for w in ("cat", "table", "make", "jumped", "wanted", "boxes", "banana")] == [
        1, 2, 1, 1, 2, 2, 3]


def test_reading_level():
    assert c.flesch_kincaid_grade(CHILD) < 3 < 12 < c.flesch_kincaid_grade(ADULT)
    assert c.check_reading_level(CHILD, max_grade=6)
    assert not c.check_reading_level(ADULT, max_grade=6)
    assert not c.check_reading_level("Yes.", max_grade=6)


def test_language():
    pytest.importorskip("langdetect")
    assert c.check_language("Le chat dort sur le canapé, et il fait très beau aujourd'hui.", "fr")
    assert not c.check_language("The cat is sleeping on the sofa and the weather is lovely today.", "fr")
    assert c.detect_language("") == "unknown"


def test_concise():
    assert c.check_concise("Paris is the capital. It is in France.", max_words=40, max_sentences=2)
    assert not c.check_concise("One. Two. Three.", max_words=40, max_sentences=2)
    assert not c.check_concise("word " * 41, max_words=40, max_sentences=2)
    assert not c.check_concise("", max_words=40, max_sentences=2)


def test_bullet_list():
    assert c.check_bullet_list("Tips:\n* water daily\n- full sun\n• good soil", min_items=3)
    assert not c.check_bullet_list("1. water daily\n2. full sun\n* good soil", min_items=3)


def test_json():
    assert c.check_json('{"name": "Stafford"}')
    assert c.check_json('```json\n["a", "b"]\n```')
    assert not c.check_json('Here it is: {"name": "Stafford"}')
    assert not c.check_json('"just a string"')


def test_lowercase():
    assert c.check_lowercase("all quiet on the western front.")
    assert not c.check_lowercase("All quiet.")
    assert not c.check_lowercase("123 !")


def test_starts_and_ends_with():
    assert c.check_starts_with('  **Here is my answer:** roses are red', "Here is my answer:")
    assert not c.check_starts_with("Sure! Here is my answer:", "Here is my answer:")
    assert c.check_ends_with('Thanks.\nDoes this make sense?"', "Does this make sense?")
    assert not c.check_ends_with("Does this make sense? Yes.", "Does this make sense?")


def test_keywords():
    text = "We walked by the River at the Lilac Festival."
    assert c.check_include_keywords(text, ["festival", "river"])
    assert not c.check_include_keywords(text, ["festival", "lake"])
    assert c.check_avoid_keywords("A riding lesson.", ["ride"])
    assert not c.check_avoid_keywords("She can RIDE now.", ["ride", "can"])


def test_check_dispatch():
    assert c.check("abc", {"type": "lowercase"})
    assert not c.check("Abc", {"type": "lowercase"})
    with pytest.raises(ValueError):
        c.check("abc", {"type": "nope"})
    spec = {"type": "concise", "max_words": 40, "max_sentences": 2, "complete": True}
    assert c.check("Short answer.", spec, finished=True)
    assert not c.check("Short answer cut", spec, finished=False)


def test_fluency():
    fresh = c.fluency("the quick brown fox jumps over the lazy dog")
    looped = c.fluency("I like it. I like it. I like it. I like it.")
    assert fresh["rep_4"] == 0.0 and fresh["distinct_2"] == 1.0
    assert looped["rep_4"] > 0.5 and looped["distinct_1"] < 0.3
    assert c.fluency("")["distinct_1"] == 0.0


def test_packaged_data():
    tasks = load_tasks(limit=8)
    assert len({t.principle_id for t in tasks}) == 8 and len(tasks) == 64
    assert all(t.checker["type"] in c.CHECKERS and "{" not in t.principle for t in tasks)
    items = load_preferences()
    assert sorted(i["answer"] for i in items) == sorted("ABCD" * 4)
    assert "A. " in mc_prompt(items[0]) and "D. " in mc_prompt(items[0])


def test_letter_scores():
    top = [{"text": "B", "logprob": -0.5}, {"text": " B", "logprob": -2.0}, {"text": "A.", "logprob": -1.0},
           {"text": "The", "logprob": -3.0}, {"text": "AB", "logprob": -0.1}]
    scores = letter_scores(top)
    assert set(scores) == {"A", "B"} and scores["B"] > scores["A"]
