"""The planner and its sequence pool without a model: admission, sequence ids, KV cells, the KV
changes and batch shapes on fake tokens, for K = 1..4 branches per request."""

import random

import pytest

from la_edge.runtime.pool import KvOp, SequencePool
from la_edge.runtime.scheduler import Action, Job, Phase, Scheduler, common_prefix, matched


def sched(n_seq_max=4, max_requests=2, n_batch=64, n_ctx_total=0, kv_unified=False, prefill_chunk=256,
          mix_prefill=False, prompt_cache=False, reuse_align=1):
    pool = SequencePool(n_seq_max, n_ctx_total, kv_unified, prompt_cache, reuse_align)
    return Scheduler(pool, max_requests, n_batch, prefill_chunk, mix_prefill)


def job(p, q=None, max_tokens=4, *more):
    return Job.for_branches([p] + ([q] if q is not None else []) + list(more), max_tokens)


def held(s):
    return sorted([x.seq_id for j in s.active for x in j.seqs] + list(s.pool.parked))


def cleared(s):
    """The sequence ids the pool asks the runner to clear now (and takes its other changes)."""
    return [c.seq_id for c in s.pool.take_changes() if c.op is KvOp.CLEAR]


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
    return out


@pytest.mark.parametrize("a, b, n", [([1, 2, 3], [1, 2, 3], 1), ([1, 2, 3, 4], [1, 2, 9], 1), ([5], [5], 0),
                                     ([1, 2, 3, 4], [1, 2, 3, 4, 5], 2), ([1, 2], [3, 4], 0), ([], [1], 0)])
def test_common_prefix_leaves_two_tokens_of_each_prompt(a, b, n):
    assert common_prefix(a, b) == n


def test_common_prefix_of_k_prompts_is_what_all_share():
    assert common_prefix([1, 2, 3, 4, 5], [1, 2, 3, 9, 9], [1, 2, 7, 7]) == 2
    assert common_prefix([1, 2, 3]) == 0 and common_prefix([4, 4, 4, 4], [4, 4, 4, 4], [4, 4, 4, 4]) == 2


def test_job_cells_count_the_shared_prefix_once():
    j = job([1, 2, 3, 4, 5], [1, 2, 3, 9, 8], max_tokens=10)
    assert (j.shared, j.cells, j.n_seqs) == (3, 5 + 10 + 2 + 10, 2)
    assert job([1, 2], max_tokens=3).cells == 5
    full = Job.for_branches([[1, 2, 3, 4, 5], [1, 2, 3, 9]], 10, share_prefix=False)  # no exact seq_copy
    assert (full.shared, full.cells) == (0, 5 + 10 + 4 + 10)
    three = job([1, 2, 3, 4, 5], [1, 2, 3, 9, 8], 10, [1, 2, 6, 6])
    assert (three.shared, three.cells, three.n_seqs) == (2, 3 * 10 + 5 + 3 + 2, 3)


def test_without_a_shared_prefix_both_prompts_decode_in_full():
    s = sched()
    j = Job.for_branches([[1, 2, 3], [1, 2, 9]], 4, share_prefix=False)
    s.enqueue(j)
    s.admit()
    assert j.phase is Phase.PREFILL
    (batch,) = run_round(s)
    # in ascending sequence id (llama.cpp's ubatch order): A's tokens, then B's; rows follow them
    assert [(e.token, e.pos, e.logits) for e in batch.entries] == [
        (1, 0, False), (2, 1, False), (3, 2, True), (1, 0, False), (2, 1, False), (9, 2, True)]
    assert all(p.action is not Action.COPY for p in batch.planned) and batch.planned[0].rows == (2, 5)


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
    s.copied(j)
    assert j.phase is Phase.PREFILL and j.seqs[1].n_past == 3
    assert s.plan() is None  # the round is over (its prefill batch was the shared prefix)
    batch = s.plan()  # the rest of both prompts, each sequence's logits row last
    assert (a, b) == (0, 1)
    assert [(e.token, e.pos, e.seq_ids, e.logits) for e in batch.entries] == [
        (4, 3, (a,), False), (5, 4, (a,), True), (9, 3, (b,), False), (8, 4, (b,), True)]
    assert batch.planned[0].action is Action.SAMPLE and batch.planned[0].rows == (1, 3)
    assert j.phase is Phase.DECODE
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


def test_admission_never_exceeds_free_sequences():
    s = sched(n_seq_max=4, max_requests=2)
    a, b, c = job([1, 2], [3]), job([4, 5], [6]), job([7, 8], [9])
    for j in (a, b, c):
        s.enqueue(j)
    assert s.admit() == [a, b] and s.pool.free == []
    assert s.admit() == [] and c.phase is Phase.QUEUED  # no free sequence ids
    batch = s.plan()
    assert [p.job for p in batch.planned] == [a]
    s.finish(a)  # the engine thread ends jobs only between decodes: its ids are free at once
    assert sorted(cleared(s)) == [0, 1] and a.phase is Phase.DONE and len(s.active) == 1
    assert s.admit() == [c] and sorted(x.seq_id for x in c.seqs) == [0, 1]


def test_queued_job_waits_in_order_for_two_ids():
    s = sched(n_seq_max=3, max_requests=3)
    a, b, c = job([1, 2], [3]), job([4, 5], [6]), job([7])
    for j in (a, b, c):
        s.enqueue(j)
    assert s.admit() == [a]  # b needs two ids, one is free: it waits, and c waits behind it
    s.finish(a)
    assert cleared(s) == [0, 1]  # not in flight: free at once
    assert s.admit() == [b, c]


def test_finishing_a_queued_job_frees_nothing():
    s = sched(max_requests=1)
    a, b = job([1]), job([2])
    s.enqueue(a)
    s.enqueue(b)
    s.admit()
    s.finish(b)
    assert cleared(s) == [] and b.phase is Phase.DONE and list(s.queue) == []
    s.finish(b)  # twice is harmless
    assert cleared(s) == []


def test_unified_kv_cells_are_reserved_until_the_sequences_really_free():
    s = sched(n_seq_max=6, max_requests=3, kv_unified=True, n_ctx_total=40)
    a, b = job([1, 2, 3], [4, 5], max_tokens=8), job([6, 7, 8], [9], max_tokens=8)
    assert a.cells == 21 and b.cells == 20
    s.enqueue(a)
    s.enqueue(b)
    assert s.admit() == [a] and s.pool.reserved == 21  # 21 + 20 > 40: b waits
    s.plan()
    assert s.admit() == []  # a's cells are still reserved
    s.finish(a)
    assert s.pool.reserved == 0 and s.admit() == [b] and s.pool.reserved == 20
    s.finish(b)
    assert s.pool.reserved == 0


def test_a_job_alone_is_admitted_even_if_larger_than_the_cache():
    s = sched(kv_unified=True, n_ctx_total=10)
    j = job([1, 2, 3], [4], max_tokens=8)
    s.enqueue(j)
    assert s.admit() == [j]  # the engine rejects such jobs at submit; the planner never deadlocks


def random_prompts(rnd, base, vocab, k):
    """K prompts that share a random part of `base`, like a request's branches."""
    return [base[:rnd.randint(0, len(base))] + [rnd.randrange(vocab) for _ in range(rnd.randint(1, 4))]
            for _ in range(k)]


@pytest.mark.parametrize("k_max", [1, 2, 3, 4])
def test_random_operations_keep_every_sequence_id_accounted_for(k_max):
    rnd = random.Random(7 + k_max)
    for trial in range(20):
        n_req = rnd.choice([1, 2, 3, 4])
        n_seq = n_req * k_max
        s = sched(n_seq_max=n_seq, max_requests=n_req, n_batch=max(2 * k_max, rnd.choice([4, 16, 64])),
                  kv_unified=rnd.random() < 0.5, n_ctx_total=300, prefill_chunk=rnd.choice([2, 8]) * k_max,
                  mix_prefill=rnd.random() < 0.5)
        jobs = []
        batch = None
        for _ in range(300):
            op = rnd.random()
            if op < 0.2:
                base = [rnd.randrange(50) for _ in range(rnd.randint(1, 12))]
                j = Job.for_branches(random_prompts(rnd, base, 50, rnd.randint(1, k_max)), rnd.randint(1, 20))
                jobs.append(j)
                s.enqueue(j)
            elif op < 0.35:
                s.admit()
            elif op < 0.5 and jobs:
                s.finish(rnd.choice(jobs))  # a cancel, with a batch planned or not
            elif batch is None:
                s.pool.take_changes()
                batch = s.plan()
            else:
                for p in batch.planned:
                    if p.job.phase is Phase.DONE:
                        continue
                    if p.action is Action.COPY:
                        s.copied(p.job)
                    elif p.action is Action.SAMPLE:
                        assert len(p.rows) == p.job.n_seqs
                        s.sampled(p.job, 1)
                batch = None
            ids = held(s)
            assert len(ids) == len(set(ids)) and sorted(ids + s.pool.free) == list(range(n_seq))
            assert len(s.active) <= s.max_requests
            assert s.pool.reserved == sum(j.cells for j in s.active)
        for j in jobs:
            s.finish(j)
        assert s.pool.reserved == 0 and sorted(s.pool.free) == list(range(n_seq))
        assert not s.active and not s.queue


# ---- the prompt cache ---------------------------------------------------------------------------

class FakeKv:
    """What each KV sequence holds, following the pool's changes at step time, as the runner does."""

    def __init__(self):
        self.kv = {}

    def apply(self, s):
        """The runner's _apply_changes(): the pool's queued changes, in order, before a decode."""
        for c in s.pool.take_changes():
            held = self.kv.get(c.seq_id, [])
            self.kv[c.seq_id] = [] if c.op is KvOp.CLEAR else held[:c.pos]

    def plan(self, s):
        self.apply(s)
        return s.plan()

    def decode(self, batch):
        for e in batch.entries:
            (sid,) = e.seq_ids
            seq = self.kv.setdefault(sid, [])
            assert e.pos == len(seq), "tokens must land right after what the sequence holds"
            seq.append(e.token)

    def copy(self, job):
        first, *rest = job.seqs
        for b in rest:
            assert not self.kv.get(b.seq_id), "a copy goes into an empty sequence"
            self.kv[b.seq_id] = list(self.kv[first.seq_id])


def finish_one(s, kv, j, tokens=(7, 8, 9)):
    """Admit, run to the end with `tokens` sampled, and finish (parked)."""
    s.admit()
    out = list(tokens)
    while out:
        b = kv.plan(s)
        if b is None:
            continue
        kv.decode(b)
        for p in b.planned:
            if p.action is Action.COPY:
                kv.copy(p.job)
                s.copied(p.job)
            elif p.action is Action.SAMPLE:
                s.sampled(p.job, out.pop(0))
    s.finish(j, park=True)
    kv.apply(s)


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
    assert {sid: p.tokens for sid, p in s.pool.parked.items()} == {0: [1, 2, 3, 4, 5], 1: [1, 2, 9, 5]}
    assert s.pool.parked[0].cells == 5 + 2  # its prompt and the 2 generated tokens fed back
    nxt = job([1, 2, 3, 4, 5, 7, 8, 6, 6], [1, 2, 9, 5, 7, 8, 6, 6], max_tokens=3)
    s.enqueue(nxt)
    assert s.admit() == [nxt]
    assert nxt.cached == (5, 4) and nxt.shared == 0 and nxt.phase is Phase.PREFILL
    b = kv.plan(s)
    assert kv.kv == {0: [1, 2, 3, 4, 5], 1: [1, 2, 9, 5]}  # the generated tail was trimmed off at step time
    kv.decode(b)
    assert [e.token for e in b.entries] == [7, 8, 6, 6, 7, 8, 6, 6]  # by sequence, the last with logits


def test_branches_may_come_from_different_parked_sequences():
    s, kv = sched(n_seq_max=4, max_requests=1, prompt_cache=True), FakeKv()
    for p, q in (([1, 2, 3, 4], [1, 5, 6, 7]), ([8, 8, 8, 8], [1, 2, 3, 9])):
        j = job(p, q, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    j = job([8, 8, 8, 8, 1, 1], [1, 5, 6, 7, 1, 1], max_tokens=1)
    s.enqueue(j)
    s.admit()
    kv.apply(s)
    assert j.cached == (4, 4)
    assert [kv.kv[x.seq_id] for x in j.seqs] == [[8, 8, 8, 8], [1, 5, 6, 7]]


def test_three_branches_each_adopt_their_own_parked_sequence():
    s, kv = sched(n_seq_max=6, max_requests=2, prompt_cache=True), FakeKv()
    first = job([1, 1, 2, 2], [3, 3, 4, 4], 1, [5, 5, 6, 6])
    s.enqueue(first)
    finish_one(s, kv, first, tokens=(7,))
    nxt = job([1, 1, 2, 2, 8, 8], [3, 3, 4, 4, 8, 8], 1, [5, 5, 6, 6, 8, 8])
    s.enqueue(nxt)
    s.admit()
    kv.apply(s)
    assert nxt.cached == (4, 4, 4) and [x.seq_id for x in nxt.seqs] == [x for x in (0, 1, 2)]


def test_parked_sequences_are_evicted_least_recently_used():
    s, kv = sched(n_seq_max=2, max_requests=1, prompt_cache=True), FakeKv()
    for p in ([1, 1, 1], [2, 2, 2]):
        j = job(p, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    assert list(s.pool.parked) == [0, 1]
    j = job([3, 3, 3], [4, 4, 4], max_tokens=1)  # needs both ids: evicts both
    s.enqueue(j)
    s.admit()
    assert not s.pool.parked and j.cached == (0, 0)
    kv.apply(s)
    assert kv.kv == {0: [], 1: []}
    s2, kv2 = sched(n_seq_max=3, max_requests=1, prompt_cache=True), FakeKv()
    for p in ([1, 1, 1], [2, 2, 2], [5, 5, 5]):
        j = job(p, max_tokens=1)
        s2.enqueue(j)
        finish_one(s2, kv2, j, tokens=(7,))
    j = job([9, 9, 9], max_tokens=1)
    s2.enqueue(j)
    s2.admit()
    assert list(s2.pool.parked) == [1, 2] and j.seqs[0].seq_id == 0  # the oldest one went


def test_a_weak_match_keeps_the_parked_sequence_while_a_free_id_exists():
    s, kv = sched(n_seq_max=4, max_requests=1, prompt_cache=True), FakeKv()
    j = job([1, 2, 3, 4, 5, 6, 7, 8], max_tokens=1)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7,))
    other = job([1, 2, 9, 9, 9], max_tokens=1)  # shares 2 of its 8 tokens
    s.enqueue(other)
    s.admit()
    assert other.cached == (0,) and 0 in s.pool.parked


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
    s.admit()
    kv.plan(s)
    s.finish(j, park=False)
    assert cleared(s) == [0, 1] and not s.pool.parked


def test_without_the_cache_nothing_is_parked():
    s, kv = sched(n_seq_max=2, max_requests=1), FakeKv()
    j = job([1, 2, 3], [1, 2, 4], max_tokens=5)
    s.enqueue(j)
    s.admit()
    s.finish(j, park=True)
    assert cleared(s) == [0, 1] and not s.pool.parked


def test_unified_cells_evict_parked_sequences_to_fit():
    s, kv = sched(n_seq_max=6, max_requests=1, kv_unified=True, n_ctx_total=30, prompt_cache=True), FakeKv()
    j = job([1] * 10, max_tokens=2)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7, 7))
    assert s.pool.parked_cells == 11
    big = job([2] * 10, max_tokens=10)  # 20 cells + 11 parked > 30
    s.enqueue(big)
    s.admit()
    assert not s.pool.parked
    kv.apply(s)
    assert kv.kv[0] == []


def test_an_eviction_outlives_a_job_cancelled_before_the_step():
    """The hole: a job admitted (evicting parked sequences for cells) and cancelled before the
    runner's next step lost its evictions; the freed ids kept stale cells for the next job."""
    s, kv = sched(n_seq_max=4, max_requests=1, kv_unified=True, n_ctx_total=30, prompt_cache=True), FakeKv()
    j = job([1] * 10, max_tokens=2)
    s.enqueue(j)
    finish_one(s, kv, j, tokens=(7, 7))
    parked = list(s.pool.parked)
    big = job([2] * 10, max_tokens=10)  # evicts the parked sequence to fit
    s.enqueue(big)
    s.admit()
    s.finish(big)  # cancelled inside submit(), before any step
    nxt = job([3] * 6, max_tokens=2)
    s.enqueue(nxt)
    s.admit()
    assert nxt.seqs[0].seq_id in parked  # the evicted id, free again
    b = kv.plan(s)  # the step: every queued change first
    kv.decode(b)  # asserts each token lands right after what its sequence holds
    assert kv.kv[nxt.seqs[0].seq_id] == [3] * 6


def test_unified_admission_keeps_the_copy_when_dropping_it_would_over_commit():
    s, kv = sched(n_seq_max=4, max_requests=1, kv_unified=True, n_ctx_total=40, prompt_cache=True), FakeKv()
    first = job(list(range(20)), max_tokens=1)
    s.enqueue(first)
    finish_one(s, kv, first, tokens=(7,))
    # Both branches share 18 tokens; adopting the parked one would drop the copy: 22 + 22 + 2 > 40.
    pair = job(list(range(20)) + [50, 51], list(range(20)) + [60, 61], max_tokens=1)
    assert pair.cells == 2 * (22 + 1) - 20
    s.enqueue(pair)
    assert s.admit() == [pair]
    assert pair.phase is Phase.SHARED and s.pool.reserved == 26 and not s.pool.parked


@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_with_the_cache_feeds_every_sequence_exactly_its_tokens(seed):
    """Property: before each logits row, every branch's sequence holds exactly its prompt plus the
    sampled tokens; the fake KV makes the pool's changes only at step time, as the runner does, and
    jobs are cancelled at random points (queued, admitted before a step, in flight, decoding)."""
    rnd = random.Random(seed)
    k_max = [1, 2, 3, 4][seed % 4]
    n_req = rnd.choice([1, 2, 3])
    n_seq = n_req * k_max
    s = sched(n_seq_max=n_seq, max_requests=n_req, n_batch=max(2 * k_max, rnd.choice([4, 16, 64])),
              kv_unified=rnd.random() < 0.5, n_ctx_total=400, prefill_chunk=rnd.choice([2, 8]) * k_max,
              prompt_cache=True, mix_prefill=rnd.random() < 0.5)
    kv, history, jobs = FakeKv(), {}, []
    base = [[rnd.randrange(5) for _ in range(rnd.randint(2, 10))] for _ in range(3)]
    for step in range(400):
        op = rnd.random()
        if op < 0.2:
            p = rnd.choice(base) + [rnd.randrange(5) for _ in range(rnd.randint(0, 6))]
            prompts = [p] + [p[:rnd.randint(0, len(p))] + [rnd.randrange(5)] for _ in range(rnd.randint(0, k_max - 1))]
            j = Job.for_branches(prompts, rnd.randint(1, 6))
            history[id(j)] = []
            jobs.append(j)
            s.enqueue(j)
            if rnd.random() < 0.3:
                s.admit()  # as submit() does, possibly while a batch is in flight
            if rnd.random() < 0.3:
                base.append(p + [rnd.randrange(5)])  # a conversation goes on
        elif op < 0.35:
            s.admit()
        elif op < 0.45 and jobs:
            s.finish(rnd.choice(jobs), park=rnd.random() < 0.7)
        else:
            b = kv.plan(s)
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
                    # the rows are the job's own sequences' last entries, in branch order, with logits
                    assert [b.entries[r].seq_ids[0] for r in p.rows] == [x.seq_id for x in p.job.seqs]
                    assert all(b.entries[r].logits for r in p.rows)
                    h = history[id(p.job)]
                    for x, prompt in zip(p.job.seqs, p.job.prompts):
                        assert kv.kv[x.seq_id] == prompt + h, (seed, step)
                    t = rnd.randrange(5)
                    h.append(t)
                    s.sampled(p.job, t)
            kv.apply(s)  # the state the next decode sees
            ids = held(s)
            assert len(ids) == len(set(ids)) and sorted(ids + s.pool.free) == list(range(n_seq))
            for sid, pk in s.pool.parked.items():
                assert kv.kv[sid][:len(pk.tokens)] == pk.tokens and len(kv.kv[sid]) == pk.cells
            for i in s.pool.free:
                assert not kv.kv.get(i), "a free sequence holds nothing"


def test_a_request_s_sequences_get_neighbouring_ids():
    """With split streams llama.cpp decodes only consecutive ascending sequence ids in one forward
    pass, and attends over every stream between a batch's lowest and highest id: keep them adjacent."""
    s, kv = sched(n_seq_max=8, max_requests=4, prompt_cache=True), FakeKv()
    pool = s.pool
    pool.free = [0, 7, 1, 5]  # say ids 2, 3, 4 and 6 are held elsewhere
    assert pool._run_start(1) == 0 and pool._run_start(2) == 0 and pool._run_start(3) is None
    assert pool._free_id(7) == 7 and pool._free_id(None) == 0 and pool._free_id(3) == 5  # a tie: after
    assert pool.free == [1] and pool._run_start(2) is None
    pool.free = [7, 6, 5, 4, 3, 2, 1, 0]
    assert pool._run_start(3) == 0 and pool._free_id(4, first=True) == 4 and pool._free_id(4) == 5  # a tie: after
    pool.free = [0, 1, 2, 3, 4, 5, 6, 7]
    for p in ([1, 1, 1, 1], [2, 2, 2, 2]):
        j = job(p, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    assert list(pool.parked) == [0, 1]  # a fresh job takes the lowest free id
    pair = job([1, 1, 1, 1, 5, 5], [9, 9, 9], max_tokens=1)  # A adopts id 0; B takes a free id
    s.enqueue(pair)
    s.admit()
    assert [x.seq_id for x in pair.seqs] == [0, 2]  # 1 is parked: 2 is the closest free id
    three = job([4, 4, 4], [5, 5, 5], 1, [6, 6, 6])
    s.enqueue(three)
    s.admit()
    assert [x.seq_id for x in three.seqs] == [3, 4, 5]  # the lowest run of three free ids, ascending


def test_a_step_s_entries_go_in_ascending_sequence_id_with_rows_remapped():
    s = sched(n_seq_max=4, max_requests=2)
    first = job([1, 2, 3], [1, 2, 4])
    s.enqueue(first)
    s.admit()
    second = job([5, 6, 7], [5, 6, 8])
    s.enqueue(second)
    s.admit()
    assert [x.seq_id for j in (first, second) for x in j.seqs] == [0, 1, 2, 3]
    # as parked sequences may leave them: each job's ids descending, the later job's ids lower
    first.seqs[0].seq_id, first.seqs[1].seq_id, second.seqs[0].seq_id, second.seqs[1].seq_id = 3, 2, 1, 0
    for j in (first, second):
        for x in j.seqs:
            x.pending, x.n_past = [9], 3
        j.phase = Phase.DECODE
    batch = s.plan()
    assert [e.seq_ids[0] for e in batch.entries] == [0, 1, 2, 3]
    rows = {p.job: p.rows for p in batch.planned}
    assert [batch.entries[r].seq_ids[0] for r in rows[first]] == [3, 2]  # still in branch order
    assert [batch.entries[r].seq_ids[0] for r in rows[second]] == [1, 0]


def test_a_tie_in_whole_blocks_goes_to_the_longer_match_not_the_newer_one():
    """Two conversations share a system prompt: the next turn adopts its own conversation's sequence
    (30 tokens held, 30 match) over the newer one of the other (31 held, 20 match), both 16 in blocks."""
    s, kv = sched(n_seq_max=8, max_requests=2, prompt_cache=True, reuse_align=16), FakeKv()
    system = list(range(20))
    own, other = system + [50] * 10, system + [60] * 11
    for p in (own, other):
        j = job(p, max_tokens=1)
        s.enqueue(j)
        finish_one(s, kv, j, tokens=(7,))
    nxt = job(own + [70] * 8, max_tokens=1)
    s.enqueue(nxt)
    s.admit()
    assert nxt.cached == (16,) and nxt.seqs[0].seq_id == 0
