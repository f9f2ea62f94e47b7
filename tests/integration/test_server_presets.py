"""Presets as model names, the system message as the principle, server defaults and refused OpenAI
fields, through the official openai client against a real server on 127.0.0.1."""

import httpx
import openai
import pytest

from la_edge.faces.presets import Steering
from la_edge.faces.principles import Principle, PrincipleSpec
from serving import running_server, wait_idle

FRENCH = "Answer in French."
KIND = PrincipleSpec.from_fields({"principles": ["Be kind.", "Be brief."], "avoid": ["Use jargon."]})
PRESETS = {"french": PrincipleSpec((Principle(FRENCH, 3.0),)), "kind": KIND}
DEFAULT = "Answer like a pirate."
SYSTEM = "Always answer in German."
LONG = ("I am planning a small garden behind my house with tomatoes, basil, carrots and a few sunflowers, and I "
        "would like to know which of them need the most sunlight, how often to water them in a dry summer, and "
        "whether any of them should not be planted next to each other. ")


@pytest.fixture(scope="module")
def server(model_path):
    steering = Steering("smollm2", PRESETS)
    with running_server(model_path, server_kw={"steering": steering}, n_ctx=1024, max_requests=2,
                        n_threads=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, model="smollm2", messages=None, max_tokens=12, **extra):
    messages = messages or [{"role": "user", "content": "What is rain?"}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                       logprobs=True, top_logprobs=2, extra_body=extra or None)
    return r


def same(a, b):
    """Same text, same tokens with the same logprobs, same prompt size."""
    la = [(t.token, t.logprob, [(x.token, x.logprob) for x in t.top_logprobs]) for t in a.choices[0].logprobs.content]
    lb = [(t.token, t.logprob, [(x.token, x.logprob) for x in t.top_logprobs]) for t in b.choices[0].logprobs.content]
    return (a.choices[0].message.content == b.choices[0].message.content and la == lb
            and a.usage.prompt_tokens == b.usage.prompt_tokens)


def test_models_lists_one_id_per_preset(client):
    assert [m.id for m in client.models.list().data] == ["smollm2", "smollm2:french", "smollm2:kind"]


def test_a_preset_by_model_name_is_its_principle(client):
    by_name = ask(client, "smollm2:french")
    assert by_name.model == "smollm2:french"
    assert same(by_name, ask(client, principle=FRENCH, alignment_ratio=3.0))
    assert not same(by_name, ask(client))  # plain differs
    assert same(ask(client, "smollm2:latest"), ask(client, "gpt-4o"))  # plain names as before


def test_request_fields_override_the_preset(client):
    assert same(ask(client, "smollm2:french", principle="Be brief."), ask(client, principle="Be brief."))
    assert same(ask(client, "smollm2:french", principles=[]), ask(client))  # an empty list: plain
    assert same(ask(client, "smollm2:french", alignment_ratio=1.0), ask(client, principle=FRENCH, alignment_ratio=1.0))


def test_a_preset_with_several_principles_and_avoid(client):
    r = ask(client, "smollm2:kind")
    assert len(r.model_extra["la_edge"]["prompts"]["branches"]) == 4  # two principles, avoid, plain
    fields = KIND.to_fields()
    assert same(r, ask(client, principles=fields["principles"], avoid=fields["avoid"]))


def test_an_unknown_preset_is_a_404_listing_the_names(client):
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "smollm2:german")
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "smollm2:french" in err["message"] and "smollm2:kind" in err["message"]


def test_completions_take_the_preset(client):
    kw = dict(prompt="The capital of France is", max_tokens=8, temperature=0)
    a = client.completions.create(model="smollm2:french", **kw)
    b = client.completions.create(model="smollm2", extra_body={"principle": FRENCH, "alignment_ratio": 3.0}, **kw)
    assert a.choices[0].text == b.choices[0].text and a.model == "smollm2:french"


def test_system_message_as_principle_is_exactly_the_principle_field(client):
    with_system = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is rain?"}]
    moved = ask(client, messages=with_system, principle_from="system")
    assert same(moved, ask(client, principle=SYSTEM))  # the principled branch holds it, the plain one does not
    assert not same(moved, ask(client, messages=with_system))  # unlike a plain system prompt
    # the system message beats a preset; a request principle beats the system message
    assert same(ask(client, "smollm2:french", messages=with_system, principle_from="system"), moved)
    assert same(ask(client, messages=with_system, principle_from="system", principle="Be brief."),
                ask(client, messages=with_system, principle="Be brief."))


def test_bad_principle_from_is_a_400(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(server.base + "/v1/chat/completions", json={**body, "principle_from": "user"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "principle_from"
    r = httpx.post(server.base + "/v1/completions", json={"prompt": "hi", "principle_from": "system"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "principle_from"


@pytest.mark.parametrize("path, field, value", [
    ("chat", "n", 2), ("chat", "response_format", {"type": "json_object"}),
    ("chat", "tools", [{"type": "function", "function": {"name": "f"}}]), ("chat", "tool_choice", "required"),
    ("chat", "functions", [{"name": "f"}]), ("chat", "function_call", {"name": "f"}),
    ("chat", "logit_bias", {"50": 10}), ("completions", "echo", True), ("completions", "best_of", 3),
    ("completions", "suffix", "end"), ("completions", "n", 2),
])
def test_unsupported_openai_fields_are_refused_by_name(server, path, field, value):
    body = ({"messages": [{"role": "user", "content": "hi"}]} if path == "chat" else {"prompt": "hi"})
    r = httpx.post(f"{server.base}/v1/{'chat/completions' if path == 'chat' else 'completions'}",
                   json={**body, "max_tokens": 2, field: value}, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "unsupported" and err["param"] == field and field in err["message"]


def test_neutral_values_of_those_fields_pass(client):
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       n=1, response_format={"type": "text"},
                                       logit_bias={}, extra_body={"tools": [], "tool_choice": "none"})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_reply_cut_by_a_stop_string_keeps_the_prompt_cache(server, client):
    assert wait_idle(server.la)
    messages = [{"role": "user", "content": LONG + "Answer in a few words."}]
    full = ask(client, messages=messages, max_tokens=24, principle=FRENCH).choices[0].message.content
    stop = full.split()[2]  # a word inside the answer
    cut = ask(client, messages=messages, max_tokens=24, principle=FRENCH, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    messages += [{"role": "assistant", "content": cut.choices[0].message.content},
                 {"role": "user", "content": "And which one first?"}]
    nxt = ask(client, messages=messages, max_tokens=4, principle=FRENCH)
    # the whole first turn comes from the sequences the stopped request parked (16-token blocks)
    assert nxt.usage.prompt_tokens_details.cached_tokens >= cut.usage.prompt_tokens // 16 * 16 > 0
    assert nxt.usage.prompt_tokens_details.model_extra["plain_cached_tokens"] > 0
    assert wait_idle(server.la)


# ---- a server with a default principle and --principle-from system ---------------------------------
@pytest.fixture(scope="module")
def defaulted(model_path, server):
    steering = Steering("smollm2", PRESETS, default=PrincipleSpec.one(DEFAULT, 2.0), from_system=True)
    with running_server(model_path, server_kw={"steering": steering}, n_ctx=1024, max_requests=2,
                        n_threads=1) as srv:
        yield openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_server_default_principle_for_requests_that_bring_none(defaulted):
    plain_default = ask(defaulted)
    assert same(plain_default, ask(defaulted, principle=DEFAULT, alignment_ratio=2.0))
    assert not same(plain_default, ask(defaulted, principles=[]))  # an empty list opts out: plain
    assert same(ask(defaulted, "smollm2:french"), ask(defaulted, principle=FRENCH, alignment_ratio=3.0))


def test_server_principle_from_system(defaulted):
    with_system = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is rain?"}]
    assert same(ask(defaulted, messages=with_system), ask(defaulted, principle=SYSTEM))
    # principle_from "none" keeps the system message a system message; the default principle applies
    assert same(ask(defaulted, messages=with_system, principle_from="none"),
                ask(defaulted, messages=with_system, principle=DEFAULT))
