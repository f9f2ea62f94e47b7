"""The prompt cache on the real model: exact against cold runs, visible in usage, bounded under churn."""

import random
import threading

import httpx
import openai
import pytest

from la_edge import Aligner, GenerationParams
from serving import running_server, wait_idle

PRINCIPLE = "Be concise and friendly."
GREEDY = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=32)
CONVERSATIONS = [
    ["What is a CPU?", "And a GPU?", "Which is faster for games?", "Why?", "Give an example.", "Thanks!"],
    ["Tell me about the moon.", "How far away is it?", "Can people live there?", "What about Mars?",
     "Which is colder?", "Summarize our chat."],
    ["I want to learn to cook.", "What should I make first?", "I have eggs and rice.", "How long does it take?",
     "Is it healthy?", "What next?"],
    ["Hi!", "What can you do?", "Write a haiku about rain.", "Now one about snow.", "Which do you prefer?",
     "Bye."],
    ["Explain recursion.", "Show it in Python.", "What is a base case?", "What if I forget it?",
     "Is iteration better?", "One sentence summary please."],
]


def play(la, turns, system="You are a helpful assistant."):
    """One conversation, each answer fed back; returns per turn (tokens, cached, plain cached)."""
    messages = [{"role": "system", "content": system}]
    out = []
    for text in turns:
        messages.append({"role": "user", "content": text})
        r = la.generate(messages=messages, principle=PRINCIPLE, params=GREEDY)
        out.append((r.tokens, r.usage["cached_tokens"], r.usage["plain_cached_tokens"]))
        messages.append({"role": "assistant", "content": r.text})
    return out


@pytest.fixture(scope="module")
def cold(model_path):
    with Aligner.load(model_path, n_ctx=2048, prompt_cache=False) as la:
        return [play(la, turns) for turns in CONVERSATIONS]


def test_cached_conversations_give_the_tokens_of_cold_runs(model_path, cold):
    # Two conversations at a time share the cache (4 sequences), turn by turn.
    with Aligner.load(model_path, n_ctx=2048, max_requests=2) as la:
        warm = [None] * len(CONVERSATIONS)
        for i in range(0, len(CONVERSATIONS), 2):
            pair = list(range(i, min(i + 2, len(CONVERSATIONS))))
            runs = {k: [] for k in pair}
            msgs = {k: [{"role": "system", "content": "You are a helpful assistant."}] for k in pair}
            for turn in range(6):
                for k in pair:
                    msgs[k].append({"role": "user", "content": CONVERSATIONS[k][turn]})
                    r = la.generate(messages=msgs[k], principle=PRINCIPLE, params=GREEDY)
                    runs[k].append((r.tokens, r.usage["cached_tokens"], r.usage["plain_cached_tokens"]))
                    msgs[k].append({"role": "assistant", "content": r.text})
            for k in pair:
                warm[k] = runs[k]
        assert la.engine.leaked_sequences() == []
    for k, (w, c) in enumerate(zip(warm, cold)):
        assert [t for t, _, _ in w] == [t for t, _, _ in c], f"conversation {k}"
        assert all(cp == 0 and c0 == 0 for _, cp, c0 in c)  # the cold runs really were cold
        assert k or w[0][1] == 0  # nothing to reuse before the first answer (later ones share the system text)
        for turn, (_, cp, c0) in enumerate(w[1:], start=2):
            assert cp > 0 and c0 > 0, (k, turn)  # each later turn reused both branches


def test_the_cache_reuses_the_whole_previous_prompt(model_path):
    with Aligner.load(model_path, n_ctx=1024) as la:
        first = la.generate("Name three colours.", principle=PRINCIPLE, params=GREEDY)
        again = la.generate("Name three colours.", principle=PRINCIPLE, params=GREEDY)
        assert again.tokens == first.tokens
        # The same prompt again: all but its last 2 tokens, in whole 16-token blocks, from the cache.
        assert again.usage["cached_tokens"] == (first.usage["prompt_tokens"] - 2) // 16 * 16 > 0
        assert again.usage["plain_cached_tokens"] == (first.usage["plain_prompt_tokens"] - 2) // 16 * 16 > 0
        stats = la.status()["prompt_cache"]
        # One request of up to 4 branches (max_branches' default): the context holds 4 sequences.
        assert stats["enabled"] and stats["parked_sequences"] == 2 and stats["max_sequences"] == 4
        assert la.engine.clear_cache() == 2 and la.engine.used_sequences() == []


def test_plain_decoding_reuses_an_aligned_request_s_principled_branch(model_path):
    with Aligner.load(model_path, n_ctx=1024) as la:
        la.generate("Name three colours.", principle=PRINCIPLE, params=GREEDY)
        r0 = la.generate("Name three colours.", principle=PRINCIPLE, params=GREEDY.with_(ratio=0.0))
        assert r0.usage["cached_tokens"] == (r0.usage["prompt_tokens"] - 2) // 16 * 16 > 0


def test_off_means_off(model_path):
    with Aligner.load(model_path, n_ctx=1024, prompt_cache=False) as la:
        la.generate("Hi", principle=PRINCIPLE, params=GREEDY)
        r = la.generate("Hi", principle=PRINCIPLE, params=GREEDY)
        assert r.usage["cached_tokens"] == r.usage["plain_cached_tokens"] == 0
        assert la.engine.used_sequences() == [] and la.status()["prompt_cache"]["enabled"] is False


def test_churn_with_cancellations_stays_within_the_bound(model_path):
    """200 mixed requests from 4 threads, a third cancelled at a random point; the cache stays consistent."""
    rnd = random.Random(3)
    stems = ["Tell me a fact about cats.", "What is 2+2?", "Describe the sea.", "Give me a name for a dog."]
    with Aligner.load(model_path, n_ctx=512, max_requests=2, max_queue=64, n_threads=1) as la:
        la.start()
        engine, errors, lock = la.engine, [], threading.Lock()
        plans = [(rnd.choice(stems) + " " * rnd.randint(0, 1) + rnd.choice(["", " Please.", " Briefly."]),
                  rnd.random() < 0.35, rnd.randint(0, 4), rnd.choice([0.0, 2.0]), rnd.randint(1, 6))
                 for _ in range(200)]

        def worker(part):
            for prompt, cancel, after, ratio, n in part:
                try:
                    req = la.submit(prompt, principle=PRINCIPLE, params=GREEDY.with_(ratio=ratio, max_tokens=n))
                    if cancel:
                        for i, _ in enumerate(req.stream()):
                            if i >= after:
                                break
                        req.cancel()
                    else:
                        req.result()
                except Exception as exc:  # noqa: BLE001  (every failure is reported below)
                    with lock:
                        errors.append(repr(exc))
                stats = engine.cache_stats()  # one consistent snapshot
                if stats["parked_sequences"] + stats["running_sequences"] > stats["max_sequences"]:
                    with lock:
                        errors.append(f"over the bound: {stats}")

        threads = [threading.Thread(target=worker, args=(plans[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a request never ended"
        assert errors == []
        assert wait_idle(la, 30)
        parked = engine.parked_sequences()
        assert sorted(engine.used_sequences()) == sorted(parked) and len(parked) <= engine.backend.n_seq_max
        for sid, p in engine.pool.parked.items():
            assert engine.backend.seq_pos_max(sid) + 1 == p.cells  # nothing half-written behind a parked id
        # And the cache still answers exactly: the same prompt, warm and cold.
        warm = la.generate(stems[0], principle=PRINCIPLE, params=GREEDY)
    with Aligner.load(model_path, n_ctx=512, prompt_cache=False) as cold:
        assert cold.generate(stems[0], principle=PRINCIPLE, params=GREEDY).tokens == warm.tokens


def test_the_server_reports_cached_tokens_as_openai_does(model_path):
    with running_server(model_path, n_ctx=1024, max_requests=2) as srv:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is a CPU?"}]
        first = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16,
                                               extra_body={"principle": PRINCIPLE})
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And a GPU?"}]
        stream = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16,
                                                extra_body={"principle": PRINCIPLE}, stream=True,
                                                stream_options={"include_usage": True})
        usage = [c.usage for c in stream if c.usage is not None][-1]
        assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 16 * 16 > 0
        assert usage.prompt_tokens_details.model_extra["plain_cached_tokens"] > 0
        health = httpx.get(srv.base + "/health").json()
        assert health["prompt_cache"]["enabled"] and health["prompt_cache"]["parked_sequences"] == 2
        assert wait_idle(srv.la)
