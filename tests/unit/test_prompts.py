"""The two prompts differ only by the principle, for the three kinds of chat template."""

import pytest

from la_edge import ChatTemplateError, InvalidParameterError
from la_edge.runtime.prompts import ChatTemplate, raw_pair

CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_SYSTEM = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
USER = [{"role": "user", "content": "Why is the sky blue?"}]
P = "Answer in French."


def test_default_system_text_is_detected_and_extended():
    t = ChatTemplate(CHATML_DEFAULT_SYSTEM)
    assert t.supports_system and t.default_system == "You are a helpful AI assistant"
    pair = t.pair(USER, P)
    assert pair.plain.startswith("<|im_start|>system\nYou are a helpful AI assistant<|im_end|>")
    assert pair.principled == pair.plain.replace("assistant<|im_end|>", "assistant " + P + "<|im_end|>", 1)


def test_own_system_message_is_the_base():
    t = ChatTemplate(CHATML_DEFAULT_SYSTEM)
    pair = t.pair([{"role": "system", "content": "Be brief."}] + USER, P)
    assert "Be brief. Answer in French.<|im_end|>" in pair.principled
    assert "Be brief.<|im_end|>" in pair.plain and P not in pair.plain


def test_template_without_default_gets_a_principle_only_system_message():
    t = ChatTemplate(CHATML)
    assert t.supports_system and t.default_system is None
    pair = t.pair(USER, P)
    assert pair.principled == "<|im_start|>system\n" + P + "<|im_end|>\n" + pair.plain


def test_template_without_system_role_puts_principle_before_the_user_turn():
    t = ChatTemplate(NO_SYSTEM, bos="<bos>")
    assert not t.supports_system
    pair = t.pair(USER, P)
    assert pair.principled == pair.plain.replace("user\n", "user\n" + P + "\n\n", 1)


def test_no_principle_means_a_single_prompt():
    pair = ChatTemplate(CHATML).pair(USER, None)
    assert pair.plain is None and pair.principled.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("messages", [[], [{"role": "user", "content": "  "}], [{"role": "user"}]])
def test_empty_messages_are_rejected(messages):
    with pytest.raises(InvalidParameterError):
        ChatTemplate(CHATML).pair(messages, P)


def test_empty_principle_is_rejected():
    with pytest.raises(InvalidParameterError):
        ChatTemplate(CHATML).pair(USER, "   ")


def test_missing_or_broken_template_is_a_typed_error():
    with pytest.raises(ChatTemplateError):
        ChatTemplate(None)
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% for x in %}")


def test_raw_pair():
    assert raw_pair("a", "b").plain == "b"
    with pytest.raises(InvalidParameterError):
        raw_pair("", "b")
