"""Ollama bodies rewritten into the OpenAI request la_edge takes (no model, no server)."""

import pytest

from la_edge.faces.ollama_api import _renamed, to_openai
from la_edge.faces.openai_schema import ChatRequest, CompletionRequest, Defaults, RequestError, validate

USER = [{"role": "user", "content": "hi"}]


def test_options_become_openai_fields():
    body = {"model": "m:french", "messages": USER, "keep_alive": "5m", "unknown": 1,
            "options": {"temperature": 0.2, "top_k": 5, "top_p": 0.9, "min_p": 0.1, "seed": 7, "num_predict": 9,
                        "stop": ["\n"], "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                        "num_ctx": 8192, "principle": "Be brief.", "alignment_ratio": 3}}
    out, origin = to_openai(body, chat=True)
    assert out == {"model": "m:french", "stream": True, "temperature": 0.2, "top_k": 5, "top_p": 0.9, "min_p": 0.1,
                   "seed": 7, "max_tokens": 9, "stop": ["\n"], "repeat_penalty": 1.1, "presence_penalty": 0.5,
                   "frequency_penalty": -0.5, "principle": "Be brief.", "alignment_ratio": 3, "messages": USER}
    assert origin["max_tokens"] == "options.num_predict" and origin["principle"] == "options.principle"
    validate(out, ChatRequest)  # a valid OpenAI request


def test_top_level_beats_options_and_negative_num_predict_is_the_default():
    out, _ = to_openai({"model": "m", "messages": USER, "principle": "A.", "stream": False,
                        "options": {"principle": "B.", "num_predict": -1}}, chat=True)
    assert out["principle"] == "A." and "max_tokens" not in out and out["stream"] is False


def test_generate_renders_a_chat_or_sends_raw():
    out, _ = to_openai({"model": "m", "prompt": "hi", "system": "Be brief."}, chat=False)
    assert out["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out, _ = to_openai({"model": "m", "prompt": "The sky is", "raw": True, "logprobs": True, "top_logprobs": 2},
                       chat=False)
    assert out["prompt"] == "The sky is" and out["logprobs"] == 2 and "messages" not in out
    validate(out, CompletionRequest)


@pytest.mark.parametrize("chat, extra, field", [
    (True, {"format": "json"}, "format"), (True, {"tools": [{"type": "function"}]}, "tools"),
    (True, {"think": True}, "think"), (False, {"images": ["aGk="]}, "images"), (False, {"template": "x"}, "template"),
    (False, {"suffix": "x"}, "suffix"), (False, {"context": [1]}, "context"), (True, {"options": []}, "options"),
    (True, {"stream": "yes"}, "stream"), (True, {"messages": "hi"}, "messages"), (True, {"model": ""}, "model"),
    (True, {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "messages[0].images"),
    (False, {"raw": True, "system": "x"}, "system"), (False, {"prompt": 3}, "prompt"),
])
def test_refused_and_wrong_fields_are_named(chat, extra, field):
    body = {"model": "m", **({"messages": USER} if chat else {"prompt": "hi"}), **extra}
    with pytest.raises(RequestError) as e:
        to_openai(body, chat)
    assert e.value.param == field and str(e.value).startswith(field.split("[")[0])


def test_empty_values_of_refused_fields_pass():
    out, _ = to_openai({"model": "m", "messages": USER, "format": "", "tools": [], "think": False}, chat=True)
    assert "format" not in out and "tools" not in out


@pytest.mark.parametrize("stop, limit", [(["x"] * 17, "at most 16"), (["x" * 513], "at most 512 characters"),
                                         ([""], "non-empty")])
def test_stop_beyond_its_limits_names_stop_and_options_stop(stop, limit):
    for chat in (True, False):
        out, origin = to_openai({"model": "m", **({"messages": USER} if chat else {"prompt": "hi", "raw": True}),
                                 "options": {"stop": stop}}, chat=chat)
        req = validate(out, ChatRequest if chat else CompletionRequest)
        with pytest.raises(RequestError) as e:
            req.params(Defaults())
        assert e.value.param == "stop" and e.value.status == 400 and limit in str(e.value)  # OpenAI's param
        ollama = _renamed(e.value, origin)
        assert ollama.param == "options.stop" and str(ollama).startswith("options.stop") and limit in str(ollama)
