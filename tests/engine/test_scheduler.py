"""Scheduler decisions without a model: token budgets, FCFS admission, chunked prefill."""
from __future__ import annotations

from livecast.engine.block_manager import BlockManager
from livecast.engine.sampling_params import SamplingParams
from livecast.engine.scheduler import Scheduler, SchedulerConfig
from livecast.engine.sequence import Sequence, SequenceGroup


def group(i, prompt_len=4):
    seq = Sequence(i, list(range(100 * i, 100 * i + prompt_len)), prompt_len)
    return SequenceGroup(f"r{i}", None, list(seq.token_ids), SamplingParams(max_tokens=100), [seq])


def run_step(scheduler):
    """Schedule, then act like the engine: advance computed tokens and append one sampled token."""
    out = scheduler.schedule()
    seqs = {s.seq_id: s for queue in (scheduler.running, scheduler.waiting) for g in queue for s in g.seqs}
    for chunk in out.scheduled:
        seq = seqs[chunk.seq_id]
        assert chunk.token_ids == seq.token_ids[chunk.start_pos:chunk.start_pos + chunk.num_new_tokens]
        assert chunk.block_table == scheduler.block_manager.block_tables[seq.seq_id]
        seq.num_computed_tokens += chunk.num_new_tokens
        scheduler.block_manager.mark_computed(seq)
        if chunk.samples:
            seq.token_ids.append(7)
    return out


def test_budget_admits_in_arrival_order_and_chunks_prefill():
    bm = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=10), bm)
    groups = [group(i, prompt_len=6) for i in range(3)]
    for g in groups:
        scheduler.add(g)
    out = run_step(scheduler)
    assert [(s.request_id, s.num_new_tokens) for s in out.scheduled] == [("r0", 6), ("r1", 4)]
    out = run_step(scheduler)  # r0 decodes, r1 finishes its prompt, r2 gets what is left
    assert [(s.request_id, s.num_new_tokens) for s in out.scheduled] == [("r0", 1), ("r1", 2), ("r2", 6)]
