"""The planner without a model: admission, sequence ids, KV cells and batch shapes on fake tokens."""

import random

import pytest

from la_edge.runtime.scheduler import Action, Job, KvOp, Phase, Scheduler, common_prefix, matched


def sched(**kw):
    args = dict(n_seq_max=4, max_requests=2, n_batch=64)
    args.update(kw)
    return Scheduler(**args)


def job(p, q=None, max_tokens=4):
    return Job.for_prompts(list(p), None if q is None else list(q), max_tokens)


def held(s):
    return sorted([x.seq_id for j in s.active for x in j.seqs] + s.releasing + list(s.parked))


def run_round(s, sample_token=7):
    """Plan and 'decode' every batch of one round; returns the batches."""
    out = []
    while (b := s.plan()) is not None:
        out.append(b)
        for p in b.planned:
            if p.action is Action.COPY:
                s.copied(p.job)
            elif p.action is Action.SAMPLE:
                s.sampled(p.job, sample_token)
        s.end_batch()
    return out


@pytest.mark.parametrize("a, b, n", [([1, 2, 3], [1, 2, 3], 1), ([1, 2, 3, 4], [1, 2, 9], 1), ([5], [5], 0),
                                     ([1, 2, 3, 4], [1, 2, 3, 4, 5], 2), ([1, 2], [3, 4], 0), ([], [1], 0)])
def test_common_prefix_leaves_two_tokens_of_each_prompt(a, b, n):
    assert common_prefix(a, b) == n


def test_job_cells_count_the_shared_prefix_once():
    j = job([1, 2, 3, 4, 5], [1, 2, 3, 9, 8], max_tokens=10)
    assert (j.shared, j.cells, j.n_seqs) == (3, 5 + 10 + 2 + 10, 2)
    assert job([1, 2], max_tokens=3).cells == 5
    full = Job.for_prompts([1, 2, 3, 4, 5], [1, 2, 3, 9], 10, share_prefix=False)  # no exact seq_copy
    assert (full.shared, full.cells) == (0, 5 + 10 + 4 + 10)


def test_without_a_shared_prefix_both_prompts_decode_in_full():
    s = sched()
    j = Job.for_prompts([1, 2, 3], [1, 2, 9], 4, share_prefix=False)
    s.enqueue(j)
    s.admit()
    assert j.phase is Phase.PREFILL
    (batch,) = run_round(s)
    assert [(e.token, e.pos, e.logits) for e in batch.entries] == [
        (1, 0, False), (2, 1, False), (1, 0, False), (2, 1, False), (3, 2, True), (9, 2, True)]
    assert all(p.action is not Action.COPY for p in batch.planned)


def test_shared_prefix_then_copy_then_decode():
    s = sched()
    j = job([1, 2, 3, 4, 5], [1, 2, 3, 9, 8])
    s.enqueue(j)
    assert s.admit() == [j] and j.phase is Phase.SHARED
    a, b = (x.seq_id for x in j.seqs)
    batch = s.plan()  # the shared prefix, in A only
    assert [(e.token, e.pos, e.seq_ids, e.logits) for e in batch.entries] == [
        (1, 0, (a,), False), (2, 1, (a,), False), (3, 2, (a,), False)]
    assert [(p.job, p.action) for p in batch.planned] == [(j, Action.COPY)]
    s.end_batch()
    s.copied(j)
    assert j.phase is Phase.PREFILL and j.seqs[1].n_past == 3
    assert s.plan() is None  # the round is over (its prefill batch was the shared prefix)
    batch = s.plan()  # the rest of both prompts, with the two logits rows last
    assert [(e.token, e.pos, e.seq_ids, e.logits) for e in batch.entries] == [
        (4, 3, (a,), False), (9, 3, (b,), False), (5, 4, (a,), True), (8, 4, (b,), True)]
    assert batch.planned[0].action is Action.SAMPLE and batch.planned[0].rows == (2, 3)
    assert j.phase is Phase.DECODE
    s.end_batch()
    s.sampled(j, 42)
    assert s.plan() is None
    batch = s.plan()
    assert [(e.token, e.pos, e.seq_ids, e.logits) for e in batch.entries] == [(42, 5, (a,), True), (42, 5, (b,), True)]
    assert batch.planned[0].rows == (0, 1)


def test_single_sequence_job_without_plain_prompt():
    s = sched()
    j = job([1, 2, 3])
    s.enqueue(j)
    s.admit()
    assert len(j.seqs) == 1 and j.phase is Phase.PREFILL
    (batch,) = run_round(s)
    assert [e.logits for e in batch.entries] == [False, False, True] and batch.planned[0].rows == (2,)


def test_default_gives_a_newcomer_its_own_decode_call_and_mix_prefill_joins_them():
    for mix in (False, True):
        s = sched(n_seq_max=4, mix_prefill=mix)
        old = job([1, 2, 3], [4, 5])
        s.enqueue(old)
        s.admit()
        run_round(s)
        assert old.phase is Phase.DECODE
        new = job([6, 7, 8], [9, 10])
        s.enqueue(new)
        s.admit()
        batches = run_round(s)
        jobs = [[p.job for p in b.planned] for b in batches]
        assert jobs == ([[old, new]] if mix else [[old], [new]])


def test_chunked_prefill_while_others_decode():
    s = sched(prefill_chunk=2)
    old = job([1, 2], None)
    s.enqueue(old)
    s.admit()
    run_round(s)
    new = job(list(range(10, 17)), None)  # 7 prompt tokens
    s.enqueue(new)
    s.admit()
    sizes = []
    for _ in range(4):
        sizes.append([len(b.entries) for b in run_round(s)])
    # 2+2+1 prompt tokens, then the last 2 together: a last token is never decoded alone.
    assert sizes == [[1, 2], [1, 2], [1, 1], [1, 2]]
    assert new.phase is Phase.DECODE


def test_decoders_fill_at_most_n_batch():
    s = sched(n_seq_max=8, max_requests=4, n_batch=5)
    jobs = [job([i, i + 1], [i + 2]) for i in range(0, 12, 3)]
    for j in jobs:
        s.enqueue(j)
    s.admit()
    for _ in range(8):
        run_round(s)
    assert all(j.phase is Phase.DECODE for j in jobs)
    batch = s.plan()
    assert len(batch.entries) == 4  # two jobs of two rows; the third would need 6 > n_batch
    assert [p.job for p in batch.planned] == jobs[:2]


def test_admission_never_exceeds_free_sequences_and_waits_for_deferred_frees():
    s = sched(n_seq_max=4, max_requests=2)
    a, b, c = job([1, 2], [3]), job([4, 5], [6]), job([7, 8], [9])
    for j in (a, b, c):
        s.enqueue(j)
    assert s.admit() == [a, b] and s.free == []
    batch = s.plan()
    assert s.in_flight and [p.job for p in batch.planned] == [a]
    assert s.finish(a) == []  # cancelled during the decode: its ids wait for end_batch()
    assert a.phase is Phase.DONE and len(s.active) == 1
    assert s.admit() == [] and c.phase is Phase.QUEUED  # a free slot, but no free sequence ids
    freed = s.end_batch()
    assert sorted(freed) == [0, 1] and not s.in_flight
    assert s.admit() == [c] and sorted(x.seq_id for x in c.seqs) == [0, 1]


def test_queued_job_waits_in_order_for_two_ids():
    s = sched(n_seq_max=3, max_requests=3)
    a, b, c = job([1, 2], [3]), job([4, 5], [6]), job([7])
    for j in (a, b, c):
        s.enqueue(j)
    assert s.admit() == [a]  # b needs two ids, one is free: it waits, and c waits behind it
    assert s.finish(a) == [0, 1]  # not in flight: free at once
    assert s.admit() == [b, c]


def test_finishing_a_queued_job_frees_nothing():
    s = sched(max_requests=1)
    a, b = job([1]), job([2])
    s.enqueue(a)
    s.enqueue(b)
    s.admit()
    assert s.finish(b) == [] and b.phase is Phase.DONE and list(s.queue) == []
    assert s.finish(b) == []  # twice is harmless


def test_plan_while_in_flight_is_a_bug():
    s = sched()
    s.enqueue(job([1, 2]))
    s.admit()
    s.plan()
    with pytest.raises(RuntimeError):
        s.plan()


def test_unified_kv_cells_are_reserved_until_the_sequences_really_free():
    s = sched(n_seq_max=6, max_requests=3, kv_unified=True, n_ctx_total=40)
    a, b = job([1, 2, 3], [4, 5], max_tokens=8), job([6, 7, 8], [9], max_tokens=8)
    assert a.cells == 21 and b.cells == 20
    s.enqueue(a)
    s.enqueue(b)
    assert s.admit() == [a] and s.reserved == 21  # 21 + 20 > 40: b waits
    s.plan()
    s.finish(a)
    assert s.reserved == 21 and s.admit() == []  # a's cells are still in the cache
    s.end_batch()
    assert s.reserved == 0 and s.admit() == [b] and s.reserved == 20
    s.finish(b)
    assert s.reserved == 0


def test_a_job_alone_is_admitted_even_if_larger_than_the_cache():
    s = sched(kv_unified=True, n_ctx_total=10)
    j = job([1, 2, 3], [4], max_tokens=8)
    s.enqueue(j)
    assert s.admit() == [j]  # the engine rejects such jobs at submit; the planner never deadlocks


def test_random_operations_keep_every_sequence_id_accounted_for():
    rnd = random.Random(7)
    for trial in range(30):
        n_seq = rnd.choice([2, 4, 6, 8])
        s = sched(n_seq_max=n_seq, max_requests=n_seq // 2, n_batch=rnd.choice([4, 16, 64]),
                  kv_unified=rnd.random() < 0.5, n_ctx_total=200, prefill_chunk=rnd.choice([2, 8]),
                  mix_prefill=rnd.random() < 0.5)
        jobs = []
        batch = None
        releasing_cells = 0  # cells of jobs finished while a batch was in flight
        for _ in range(300):
            op = rnd.random()
            if op < 0.2:
                p = [rnd.randrange(50) for _ in range(rnd.randint(1, 12))]
                q = None if rnd.random() < 0.3 else p[:rnd.randint(0, len(p))] + [rnd.randrange(50)]
                j = job(p, q, max_tokens=rnd.randint(1, 20))
                jobs.append(j)
                s.enqueue(j)
            elif op < 0.35:
                s.admit()
            elif op < 0.5 and jobs:
                j = rnd.choice(jobs)
                if s.in_flight and j.phase not in (Phase.QUEUED, Phase.DONE):
                    releasing_cells += j.cells
                s.finish(j)  # a cancel, in flight or not
            elif batch is None:
                batch = s.plan()
            else:
                for p in batch.planned:
                    if p.job.phase is Phase.DONE:
                        continue
                    if p.action is Action.COPY:
                        s.copied(p.job)
                    elif p.action is Action.SAMPLE:
                        s.sampled(p.job, 1)
                s.end_batch()
                batch = None
                releasing_cells = 0
            ids = held(s)
            assert len(ids) == len(set(ids)) and sorted(ids + s.free) == list(range(n_seq))
            assert len(s.active) <= s.max_requests
            assert s.reserved == sum(j.cells for j in s.active) + releasing_cells
            assert s.in_flight == (batch is not None)
        if batch is not None:
            s.end_batch()
        for j in jobs:
            s.finish(j)
        assert s.reserved == 0 and sorted(s.free) == list(range(n_seq)) and not s.active and not s.queue


# ---- the prompt cache ---------------------------------------------------------------------------

class FakeKv:
    """What each KV sequence holds, following the planner's instructions as the runner would."""

    def __init__(self):
        self.kv = {}

    def prep(self, job):
        for p in job.prep:
            held = self.kv.get(p.seq_id, [])
            self.kv[p.seq_id] = [] if p.op is KvOp.CLEAR else held[:p.pos]
        job.prep = []

    def decode(self, batch):
        for e in batch.entries:
            (sid,) = e.seq_ids
            seq = self.kv.setdefault(sid, [])
            assert e.pos == len(seq), "tokens must land right after what the sequence holds"
            seq.append(e.token)

    def copy(self, job):
        a, b = job.seqs
        assert not self.kv.get(b.seq_id), "a copy goes into an empty sequence"
        self.kv[b.seq_id] = list(self.kv[a.seq_id])

    def clear(self, ids):
        for i in ids:
            self.kv[i] = []


def admit(s, kv):
    jobs = s.admit()
    for j in jobs:
        kv.prep(j)
    return jobs


def finish_one(s, kv, j, tokens=(7, 8, 9)):
    """Admit, run to the end with `tokens` sampled, and finish (parked)."""
    admit(s, kv)
    out = list(tokens)
    while out:
        b = s.plan()
        if b is None:
            continue
        kv.decode(b)
        for p in b.planned:
            if p.action is Action.COPY:
                kv.copy(p.job)
                s.copied(p.job)
            elif p.action is Action.SAMPLE:
                s.sampled(p.job, out.pop(0))
        kv.clear(s.end_batch())
    kv.clear(s.finish(j, park=True))


def test_matched_leaves_two_tokens_to_decode():
    assert matched([1, 2, 3, 4], [1, 2, 3, 4, 5, 6]) == 4
    assert matched([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]) == 4
    assert matched([1, 9], [1, 2, 3]) == 1 and matched([], [1, 2]) == 0
    assert matched(list(range(40)), list(range(40)) + [7], align=16) == 32
    assert matched(list(range(40)), list(range(10)) + [7], align=16) == 0


def test_a_finished_job_parks_its_prompts_and_the_next_turn_reuses_them():
    s, kv = sched(n_seq_max=2, max_requests=1, prompt_cache=True), FakeKv()
    first = job([1, 2, 3, 4, 5], [1, 2, 9, 5], max_tokens=3)
    s.enqueue(first)
    finish_one(s, kv, first)
    assert {sid: p.tokens for sid, p in s.parked.items()} == {0: [1, 2, 3, 4, 5], 1: [1, 2, 9, 5]}
    assert s.parked[0].cells == 5 + 2  # its prompt and the 2 generated tokens fed back
    nxt = job([1, 2, 3, 4, 5, 7, 8, 6, 6], [1, 2, 9, 5, 7, 8, 6, 6], max_tokens=3)
    s.enqueue(nxt)
    assert admit(s, kv) == [nxt]
    assert nxt.cached == (5, 4) and nxt.shared == 0 and nxt.phase is Phase.PREFILL
    assert kv.kv == {0: [1, 2, 3, 4, 5], 1: [1, 2, 9, 5]}  # the generated tail was trimmed off
    b = s.plan()
    kv.decode(b)
    assert [e.token for e in b.entries] == [7, 8, 6, 7, 8, 6, 6, 6]  # then the last of each, with logits


def test_branches_may_come_from_different_parked_sequences():
    s, kv = sched(n_seq_max=4, max_requests=1, prompt_cache=True), FakeKv()
    for p, q in (([1, 2, 3, 4], [1, 5, 6, 7]), ([8, 8, 8, 8], [1, 2, 3, 9])):
        j = job(p, q, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    j = job([8, 8, 8, 8, 1, 1], [1, 5, 6, 7, 1, 1], max_tokens=1)
    s.enqueue(j)
    admit(s, kv)
    assert j.cached == (4, 4)
    assert [kv.kv[x.seq_id] for x in j.seqs] == [[8, 8, 8, 8], [1, 5, 6, 7]]


def test_parked_sequences_are_evicted_least_recently_used():
    s, kv = sched(n_seq_max=2, max_requests=1, prompt_cache=True), FakeKv()
    for p in ([1, 1, 1], [2, 2, 2]):
        j = job(p, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    assert list(s.parked) == [0, 1]
    j = job([3, 3, 3], [4, 4, 4], max_tokens=1)  # needs both ids: evicts both
    s.enqueue(j)
    admit(s, kv)
    assert not s.parked and [p.op for p in j.prep] == [] and j.cached == (0, 0)
    assert kv.kv == {0: [], 1: []}
    s2, kv2 = sched(n_seq_max=3, max_requests=1, prompt_cache=True), FakeKv()
    for p in ([1, 1, 1], [2, 2, 2], [5, 5, 5]):
        j = job(p, max_tokens=1)
        s2.enqueue(j)
        finish_one(s2, kv2, j, tokens=(7,))
    j = job([9, 9, 9], max_tokens=1)
    s2.enqueue(j)
    admit(s2, kv2)
    assert list(s2.parked) == [1, 2] and j.seqs[0].seq_id == 0  # the oldest one went


def test_a_weak_match_keeps_the_parked_sequence_while_a_free_id_exists():
    s, kv = sched(n_seq_max=4, max_requests=1, prompt_cache=True), FakeKv()
    j = job([1, 2, 3, 4, 5, 6, 7, 8], max_tokens=1)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7,))
    other = job([1, 2, 9, 9, 9], max_tokens=1)  # shares 2 of its 8 tokens
    s.enqueue(other)
    admit(s, kv)
    assert other.cached == (0, 0) and 0 in s.parked


def test_a_short_match_still_copies_the_shared_prefix():
    s, kv = sched(n_seq_max=4, max_requests=1, prompt_cache=True), FakeKv()
    j = job([1, 2, 9, 9], max_tokens=1)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7,))
    pair = job([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 0, 0], max_tokens=1)  # shares 6
    s.enqueue(pair)
    finish_one(s, kv, pair, tokens=(7,))
    assert pair.shared == 6 and kv.kv[1][:6] == [1, 2, 3, 4, 5, 6]


def test_cancelled_and_failed_jobs_park_nothing():
    s, kv = sched(n_seq_max=2, max_requests=1, prompt_cache=True), FakeKv()
    j = job([1, 2, 3], [1, 2, 4], max_tokens=5)
    s.enqueue(j)
    admit(s, kv)
    s.plan()
    assert s.finish(j, park=False) == [] and s.end_batch() == [0, 1] and not s.parked


def test_without_the_cache_nothing_is_parked():
    s, kv = sched(n_seq_max=2, max_requests=1), FakeKv()
    j = job([1, 2, 3], [1, 2, 4], max_tokens=5)
    s.enqueue(j)
    admit(s, kv)
    assert s.finish(j, park=True) == [0, 1] and not s.parked


def test_unified_cells_evict_parked_sequences_to_fit():
    s, kv = sched(n_seq_max=6, max_requests=1, kv_unified=True, n_ctx_total=30, prompt_cache=True), FakeKv()
    j = job([1] * 10, max_tokens=2)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7, 7))
    assert s.parked_cells == 11
    big = job([2] * 10, max_tokens=10)  # 20 cells + 11 parked > 30
    s.enqueue(big)
    admit(s, kv)
    assert not s.parked and [p.op for p in big.prep] == [] and kv.kv[0] == []


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_with_the_cache_feeds_every_sequence_exactly_its_tokens(seed):
    """Property: before each logits row, the sequence holds exactly its prompt plus the sampled tokens."""
    rnd = random.Random(seed)
    n_seq = rnd.choice([2, 4, 6])
    s = sched(n_seq_max=n_seq, max_requests=n_seq // 2, n_batch=rnd.choice([4, 16, 64]),
              kv_unified=rnd.random() < 0.5, n_ctx_total=400, prefill_chunk=rnd.choice([2, 8]),
              prompt_cache=True)
    kv, history, jobs = FakeKv(), {}, []
    base = [[rnd.randrange(5) for _ in range(rnd.randint(2, 10))] for _ in range(3)]
    for step in range(400):
        op = rnd.random()
        if op < 0.2:
            p = rnd.choice(base) + [rnd.randrange(5) for _ in range(rnd.randint(0, 6))]
            q = None if rnd.random() < 0.3 else p[:rnd.randint(0, len(p))] + [rnd.randrange(5)]
            j = job(p, q, max_tokens=rnd.randint(1, 6))
            history[id(j)] = []
            jobs.append(j)
            s.enqueue(j)
            if rnd.random() < 0.3:
                base.append(p + [rnd.randrange(5)])  # a conversation goes on
        elif op < 0.35:
            admit(s, kv)
        elif op < 0.45 and jobs:
            j = rnd.choice(jobs)
            kv.clear(s.finish(j, park=rnd.random() < 0.7))
        else:
            b = s.plan()
            if b is None:
                continue
            kv.decode(b)
            for p in b.planned:
                if p.job.phase is Phase.DONE:
                    continue
                if p.action is Action.COPY:
                    kv.copy(p.job)
                    s.copied(p.job)
                elif p.action is Action.SAMPLE:
                    h = history[id(p.job)]
                    prompts = [p.job.tokens_p] + ([p.job.tokens_0] if p.job.tokens_0 is not None else [])
                    for x, prompt in zip(p.job.seqs, prompts):
                        assert kv.kv[x.seq_id] == prompt + h, (seed, step)
                    t = rnd.randrange(5)
                    h.append(t)
                    s.sampled(p.job, t)
            kv.clear(s.end_batch())
        ids = held(s)
        assert len(ids) == len(set(ids)) and sorted(ids + s.free) == list(range(n_seq))
        for sid, pk in s.parked.items():
            assert kv.kv[sid][:len(pk.tokens)] == pk.tokens and len(kv.kv[sid]) == pk.cells
        for i in s.free:
            assert not kv.kv.get(i), "a free sequence holds nothing"


def test_a_request_s_two_sequences_get_neighbouring_ids():
    """llama.cpp attends over every KV stream between a batch's lowest and highest id: keep pairs close."""
    s, kv = sched(n_seq_max=8, max_requests=4, prompt_cache=True), FakeKv()
    s.free = [0, 7, 1, 5]  # say ids 2, 3, 4 and 6 are held elsewhere
    assert s._free_id(7) == 7 and s._free_id(None) == 5 and s._free_id(3) == 1
    s.free = [0, 1, 2, 3, 4, 5, 6, 7]  # pop() hands out 7 first here
    for p in ([1, 1, 1, 1], [2, 2, 2, 2]):
        j = job(p, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    assert list(s.parked) == [7, 6]
    pair = job([1, 1, 1, 1, 5, 5], [9, 9, 9], max_tokens=1)  # A adopts id 7; B takes a free id
    s.enqueue(pair)
    admit(s, kv)
    assert [x.seq_id for x in pair.seqs] == [7, 5]  # 6 is parked: 5 is the closest free id
