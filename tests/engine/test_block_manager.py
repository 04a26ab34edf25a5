"""Block bookkeeping without a model: exact ids, ref counts, copy-on-write, prefix hits, eviction."""
from __future__ import annotations

import pytest

from livecast.engine.block_allocator import BlockAllocator, NoFreeBlocksError
from livecast.engine.block_manager import BlockManager
from livecast.engine.sequence import Sequence


def seq(seq_id, tokens):
    return Sequence(seq_id, list(tokens), len(tokens))


def admit_all(bm, s):
    hits, fresh = bm.blocks_to_admit(s, len(s.token_ids))
    s.num_computed_tokens = bm.admit(s, hits)
    copies = bm.append_slots(s, len(s.token_ids) - s.num_computed_tokens)
    s.num_computed_tokens = len(s.token_ids)
    bm.mark_computed(s)
    return hits, copies


def test_allocation_ids_and_free_restores_pool():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = seq(0, range(10))  # 3 blocks
    admit_all(bm, a)
    assert bm.block_tables[0] == [0, 1, 2]
    assert [bm.device.ref_counts[b] for b in range(4)] == [1, 1, 1, 0]
    bm.free(a)
    assert bm.device.num_free == 8


def test_on_demand_growth_one_block_per_block_size_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(0, range(4))
    admit_all(bm, a)
    assert len(bm.block_tables[0]) == 1
    a.token_ids.append(99)
    assert bm.num_blocks_needed(a, 1) == 1
    bm.append_slots(a, 1)
    assert len(bm.block_tables[0]) == 2


def test_fork_shares_blocks_and_copy_on_write_of_partial_last_block():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    parent = seq(0, range(6))  # blocks [0 full, 1 half]
    admit_all(bm, parent)
    child = parent.fork(1)
    bm.fork(parent, child)
    assert bm.block_tables[1] == [0, 1]
    assert bm.device.ref_counts[0] == 2 and bm.device.ref_counts[1] == 2
    # the child writes its next token into the shared half block: it gets its own copy
    child.token_ids.append(7)
    assert bm.num_blocks_needed(child, 1) == 1
    copies = bm.append_slots(child, 1)
    assert copies == [(1, 2)]
    assert bm.block_tables[1] == [0, 2]
    assert bm.device.ref_counts[1] == 1 and bm.device.ref_counts[2] == 1
    # the parent is now the only owner of block 1: it writes in place
    parent.token_ids.append(8)
    assert bm.append_slots(parent, 1) == []
    assert bm.block_tables[0] == [0, 1]
    bm.free(parent)
    bm.free(child)
    assert bm.device.num_free == 8


def test_prefix_hits_reuse_full_blocks_and_always_recompute_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 112))  # 3 full blocks
    a = seq(0, system + [1, 2])
    admit_all(bm, a)
    b = seq(1, system + [3, 4, 5])
    hits, copies = admit_all(bm, b)
    assert hits == bm.block_tables[0][:3]
    assert [bm.device.ref_counts[h] for h in hits] == [2, 2, 2]
    assert bm.prefix_hits == 3
    # a prompt that is exactly the cached blocks still recomputes its last block
    c = seq(2, system)
    hits_c, fresh = bm.blocks_to_admit(c, len(system))
    assert hits_c == bm.block_tables[0][:2] and fresh == 1


def test_evicts_unreferenced_cached_blocks_in_lru_order_only_when_needed():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = seq(0, [1, 2, 3]), seq(1, [7, 8, 9])
    admit_all(bm, a)
    admit_all(bm, b)
    a_full, b_full = bm.block_tables[0][0], bm.block_tables[1][0]
    bm.free(a)
    bm.free(b)
    assert bm.device.evictable_ids() == [a_full, b_full]
    assert bm.device.num_free == 4
    # never-hashed blocks go first, then the least recently freed cached block
    ids = [bm.device.allocate() for _ in range(3)]
    assert a_full in ids and b_full not in ids
    assert bm.device.lookup(hash((None, (1, 2)))) is None
    assert bm.device.lookup(hash((None, (7, 8)))) == b_full


def test_cached_block_revived_by_hit_leaves_eviction_list():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq(0, [1, 2, 3])
    admit_all(bm, a)
    bm.free(a)
    b = seq(1, [1, 2, 5])
    hits, _ = admit_all(bm, b)
    assert len(hits) == 1 and bm.device.evictable_ids() == []
    assert bm.device.ref_counts[hits[0]] == 1


def test_swap_out_and_in_keeps_sharing_and_frees_everything():
    bm = BlockManager(num_blocks=8, block_size=4, num_cpu_blocks=8, enable_prefix_caching=False)
    parent = seq(0, range(6))
    admit_all(bm, parent)
    child = parent.fork(1)
    bm.fork(parent, child)
    assert bm.can_swap_out([parent, child])
    out = bm.swap_out([parent, child])
    assert len(out) == 2  # two unique device blocks, copied once each
    assert bm.device.num_free == 8 and bm.cpu.num_used == 2
    assert bm.cpu_tables[0] == bm.cpu_tables[1]
    back = bm.swap_in([parent, child])
    assert len(back) == 2 and bm.block_tables[0] == bm.block_tables[1]
    assert bm.cpu.num_used == 0
    bm.free(parent)
    bm.free(child)
    assert bm.device.num_free == 8


def test_allocator_errors():
    alloc = BlockAllocator(1)
    alloc.allocate()
    with pytest.raises(NoFreeBlocksError):
        alloc.allocate()
    alloc.free(0)
    with pytest.raises(RuntimeError, match="double free"):
        alloc.free(0)


def test_slot_usage_counts_shared_blocks_once():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    parent = seq(0, range(6))
    admit_all(bm, parent)
    child = parent.fork(1)
    bm.fork(parent, child)
    assert bm.slot_usage([parent, child]) == (8, 6)
