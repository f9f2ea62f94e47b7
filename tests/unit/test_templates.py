"""Principle placement for every chat family llama.cpp knows (the list is read from llama.cpp)."""

import difflib

import pytest

from la_edge import ChatTemplateError
from la_edge.runtime.prompts import ChatTemplate, builtin_templates, select_template

PRINCIPLE = "Answer in French, please."
USER = "What is rain?"
NAMES = builtin_templates()


def test_the_list_comes_from_llama_cpp():
    assert len(NAMES) >= 40 and {"chatml", "llama3", "gemma", "mistral-v7", "phi3"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_branches_differ_only_by_the_principle_where_the_family_puts_system_text(name):
    t = ChatTemplate(None, "<s>", "</s>", name=name, source=f"builtin:{name}")
    pair = t.pair([{"role": "user", "content": USER}], PRINCIPLE)
    # One contiguous insertion turns the plain prompt into the principled one, and it holds the principle.
    ops = [o for o in difflib.SequenceMatcher(a=pair.plain, b=pair.principled, autojunk=False).get_opcodes()
           if o[0] != "equal"]
    assert len(ops) == 1 and ops[0][0] == "insert", ops
    assert PRINCIPLE in pair.principled[ops[0][3]:ops[0][4]]
    assert pair.principled.index(PRINCIPLE) < pair.principled.index(USER)
    # It sits exactly where this family renders system text (after its default system text, if any);
    # a family that drops system messages gets it at the head of the first user turn.
    if t.supports_system:
        system = f"{t.default_system} {PRINCIPLE}" if t.default_system else PRINCIPLE
        own = t.render([{"role": "system", "content": system}, {"role": "user", "content": USER}])
    else:
        own = t.render([{"role": "user", "content": f"{PRINCIPLE}\n\n{USER}"}])
    assert pair.principled == own
    assert t.placement in ("system message", "before the first user turn")


@pytest.mark.parametrize("name", NAMES)
def test_multi_turn_content_stays_apart_from_markup(name):
    t = ChatTemplate(None, "<s>", "</s>", name=name, source=f"builtin:{name}")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me <|im_end|> more"}]
    pair = t.pair(msgs, PRINCIPLE)
    content = [text for text, scaffolding in pair.principled_parts if not scaffolding]
    assert any("<|im_end|>" in c for c in content)


def test_families_without_a_system_role_get_the_principle_before_the_first_user_turn():
    assert ChatTemplate(None, name="gemma").placement == "before the first user turn"
    assert ChatTemplate(None, name="chatml").placement == "system message"


class _NoTemplate:
    def bos_eos_text(self):
        return "<s>", "</s>"

    def chat_template(self):
        return None


def test_select_template_by_name_file_and_errors(tmp_path):
    b = _NoTemplate()
    assert select_template(b, "llama3").source == "builtin:llama3"
    with pytest.raises(ChatTemplateError, match="chatml"):  # the message lists the valid names
        select_template(b, "no-such-family")
    with pytest.raises(ChatTemplateError, match="--chat-template NAME"):
        select_template(b)
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>")
    t = select_template(b, chat_template_file=str(f))
    assert t.source.startswith("file:") and t.pair([{"role": "user", "content": "x"}], "P").principled
    with pytest.raises(ChatTemplateError, match="cannot read"):
        select_template(b, chat_template_file=str(tmp_path / "missing.jinja"))
    assert select_template(b, "{{ messages[0].content }}").source == "jinja"
