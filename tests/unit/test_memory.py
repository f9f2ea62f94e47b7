"""The KV budget's arithmetic and choices (runtime/memory.py): no model."""

import pytest

from la_edge.backends.base import KvShape
from la_edge.errors import InvalidParameterError, MemoryBudgetError
from la_edge.runtime import memory
from la_edge.runtime.memory import AUTO, cell_bytes, format_size, kv_bytes, parse_size, plan, resolve_budget

# SmolLM2-135M: 30 layers, 3 KV heads of 64; Gemma-3-270M: 18 layers, 1 KV head of 256, window 512 on 15.
SMOL = KvShape(n_layer=30, n_head_kv=3, head_k=64, head_v=64)
GEMMA = KvShape(n_layer=18, n_head_kv=1, head_k=256, head_v=256, n_swa=512, n_layer_swa=15)
MiB, GiB = 1024 ** 2, 1024 ** 3


@pytest.mark.parametrize("text, want", [
    ("1.5GiB", int(1.5 * GiB)), ("800MB", 800_000_000), ("512M", 512 * MiB), ("2g", 2 * GiB), ("100", 100),
    ("64 KiB", 65536), (" auto ", AUTO), ("AUTO", AUTO), (4096, 4096),
])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "lots", "1.5 parsecs", "-1GiB", "0", "GiB", 0, "1e9"])
def test_parse_size_rejects_with_an_example(text):
    with pytest.raises(InvalidParameterError, match="kv-budget"):
        parse_size(text)


def test_cell_bytes_per_cache_type():
    # 30 layers x (K + V) x 3 heads x 64: 11,520 elements per cell
    assert cell_bytes(SMOL, "f16") == 30 * 2 * 192 * 2 == 23040
    assert cell_bytes(SMOL, "q8_0") == 30 * 2 * 192 // 32 * 34 == 12240
    assert cell_bytes(SMOL, "q4_0") == 30 * 2 * 192 // 32 * 18 == 6480
    with pytest.raises(InvalidParameterError, match="kv_type must be one of f16, q8_0, q4_0"):
        cell_bytes(SMOL, "q5_1")


def test_kv_bytes_pads_each_sequence_to_256_cells():
    assert kv_bytes(SMOL, "f16", n_seq=2, n_ctx=2048) == 2 * 2048 * 23040
    assert kv_bytes(SMOL, "f16", n_seq=2, n_ctx=300) == 2 * 512 * 23040  # rounded up as llama.cpp does
    assert kv_bytes(SMOL, "f16", n_seq=8, n_ctx=2048, unified=True) == 2048 * 23040  # one shared buffer


def test_kv_bytes_of_a_sliding_window_model():
    per_layer = 2 * 256 * 2  # K + V, one head of 256, f16
    # la_edge keeps llama.cpp's full-size window cache: every layer holds n_ctx cells
    assert kv_bytes(GEMMA, "f16", 8, 2048) == 8 * per_layer * 18 * 2048 == 288 * MiB  # as llama.cpp logs it
    # without it: 3 full layers keep 4096 cells; 15 window layers keep 512 + n_ubatch 512 = 1024 cells
    assert kv_bytes(GEMMA, "f16", 1, 4096, swa_full=False) == per_layer * (3 * 4096 + 15 * 1024)
    # a context shorter than the window: every layer keeps n_ctx cells
    assert kv_bytes(GEMMA, "f16", 1, 512, swa_full=False) == per_layer * 18 * 512


def test_no_budget_takes_what_is_asked():
    p = plan(None, SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (8, 4, 2048)
    assert p.bytes == 32 * 2048 * 23040 and p.cells == 65536 and p.warning is None


def test_a_unified_cache_is_one_buffer():
    p = plan(None, SMOL, "f16", 8, 4, 4096, unified=True)
    assert p.cells == 4096 and p.bytes == 4096 * 23040


def test_requests_go_first():
    budget = kv_bytes(SMOL, "f16", 3 * 4, 2048) + 1000  # room for 3 requests of 4 branches
    p = plan(budget, SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (3, 4, 2048)
    assert p.bytes <= budget


def test_then_branches_never_below_two():
    budget = kv_bytes(SMOL, "f16", 3, 2048)  # one request of 3 branches
    p = plan(budget, SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (1, 3, 2048)
    p = plan(kv_bytes(SMOL, "f16", 2, 2048), SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (1, 2, 2048)


def test_then_context_in_steps_of_256():
    budget = kv_bytes(SMOL, "f16", 2, 1024) + kv_bytes(SMOL, "f16", 1, 100)  # 2 x 1024 and a bit
    p = plan(budget, SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (1, 2, 1024)


def test_a_budget_too_small_says_what_would_fit():
    need = kv_bytes(SMOL, "f16", 2, 256)
    with pytest.raises(MemoryBudgetError) as err:
        plan(need - 1, SMOL, "f16", 8, 4, 2048)
    msg = str(err.value)
    assert "cannot hold one request of 2 branches at n_ctx=256" in msg
    assert f"raise --kv-budget to {format_size(need)}" in msg and "--kv-type q8_0" in msg
    assert isinstance(err.value, InvalidParameterError)  # exit code 2, HTTP 400


def test_an_explicit_context_is_not_sacrificed():
    budget = kv_bytes(SMOL, "f16", 2, 1024)
    p = plan(budget, SMOL, "f16", 8, 4, 1024, fixed=("n_ctx",))
    assert (p.max_requests, p.max_branches, p.n_ctx) == (1, 2, 1024)
    with pytest.raises(MemoryBudgetError, match=r"at n_ctx=4096: .*lower --n-ctx to 1024 \(fits this budget\)"):
        plan(budget, SMOL, "f16", 8, 4, 4096, fixed=("n_ctx",))


def test_explicit_values_win_and_the_budget_warns():
    p = plan(10 * MiB, SMOL, "f16", 8, 4, 2048, fixed=("max_requests", "n_ctx"))
    assert (p.max_requests, p.max_branches, p.n_ctx) == (8, 2, 2048)
    assert p.bytes > 10 * MiB and "over the budget of 10 MiB (the explicit values win)" in p.warning
    p = plan(kv_bytes(SMOL, "f16", 8 * 2, 512), SMOL, "f16", 8, 4, 2048, fixed=("max_requests",))
    assert (p.max_requests, p.max_branches, p.n_ctx) == (8, 2, 512) and p.warning is None


def test_q8_0_holds_about_twice_the_cells():
    budget = kv_bytes(SMOL, "f16", 8, 2048)
    f16 = plan(budget, SMOL, "f16", 8, 4, 2048)
    q8 = plan(budget, SMOL, "q8_0", 8, 4, 2048)
    assert f16.n_seq == 8 and q8.n_seq == 12  # 2 -> 3 requests of 4 branches
    assert "KV cache q8_0, 12 KiB per cell: 3 requests x 4 branches x 2048 tokens = 24,576 cells" in q8.describe()


def test_auto_is_a_stated_share_of_the_memory_available():
    assert memory.AUTO_SHARE == 0.25
    assert resolve_budget("auto", available=lambda: 8 * GiB) == 2 * GiB
    assert resolve_budget("1GiB", available=lambda: 1) == GiB
    assert resolve_budget(None) is None
    assert resolve_budget("auto", available=lambda: None) is None  # unknown platform: no budget


def test_auto_chooses_from_faked_free_memory(monkeypatch):
    monkeypatch.setenv("LA_EDGE_MEM_AVAILABLE", "2GiB")
    budget = resolve_budget("auto")
    assert budget == GiB // 2
    p = plan(budget, SMOL, "f16", 8, 4, 2048)  # 512 MiB: 11 sequences of 2048 cells
    assert (p.max_requests, p.max_branches, p.n_ctx) == (2, 4, 2048)
    monkeypatch.setenv("LA_EDGE_MEM_AVAILABLE", "64GiB")
    p = plan(resolve_budget("auto"), SMOL, "f16", 8, 4, 2048)
    assert (p.max_requests, p.max_branches, p.n_ctx) == (8, 4, 2048)  # never more than asked
    monkeypatch.setenv("LA_EDGE_MEM_AVAILABLE", "8MiB")
    with pytest.raises(MemoryBudgetError, match="--kv-budget 2 MiB cannot hold"):
        plan(resolve_budget("auto"), SMOL, "f16", 8, 4, 2048)


def test_mem_available_reads_this_machine():
    n = memory.mem_available()
    assert n is None or n > 0


def test_fixed_names_only_what_can_be_fixed():
    with pytest.raises(InvalidParameterError, match="fixed may name max_requests and n_ctx"):
        plan(GiB, SMOL, "f16", 8, 4, 2048, fixed=("max_branches",))
