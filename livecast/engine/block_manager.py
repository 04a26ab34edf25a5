"""Block tables: which physical KV blocks hold each sequence, shared copy-on-write across forks."""
from __future__ import annotations

from livecast.engine.block_allocator import BlockAllocator
from livecast.engine.sequence import Sequence


def block_hash(parent: int | None, token_ids: list[int]) -> int:
    return hash((parent, tuple(token_ids)))


class BlockManager:
    """Maps sequences to device blocks (and to CPU blocks while swapped out).

    Pure bookkeeping: it decides block ids and which copies must happen; the model runner moves
    the data. Full blocks are hash-chained over their tokens so a repeated prefix is found again.
    """

    def __init__(self, num_blocks: int, block_size: int, num_cpu_blocks: int = 0,
                 enable_prefix_caching: bool = True, watermark: float = 0.01) -> None:
        self.block_size = block_size
        self.device = BlockAllocator(num_blocks, enable_prefix_caching)
        self.cpu = BlockAllocator(max(num_cpu_blocks, 1), enable_caching=False)
        self.num_cpu_blocks = num_cpu_blocks
        self.watermark_blocks = int(watermark * num_blocks)
        self.block_tables: dict[int, list[int]] = {}
        self.cpu_tables: dict[int, list[int]] = {}
        self._hashes: dict[int, list[int]] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0

    # -- admission -------------------------------------------------------------------------
    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Device blocks already holding this sequence's leading full blocks (never all of it:
        the last token is always recomputed so the step yields its logits)."""
        bs, tokens = self.block_size, seq.token_ids
        hits, parent = [], seq.cache_salt
        for i in range((len(tokens) - 1) // bs):
            parent = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            block_id = self.device.lookup(parent)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def blocks_to_admit(self, seq: Sequence, num_new_tokens: int) -> tuple[list[int], int]:
        """(cached blocks, number of fresh blocks needed) to admit `seq` and compute a chunk."""
        hits = self._cached_prefix(seq)
        num_cached = len(hits) * self.block_size
        num_new_tokens = min(num_new_tokens, len(seq.token_ids) - num_cached)
        total = -(-(num_cached + num_new_tokens) // self.block_size)
        return hits, total - len(hits)

    def can_admit(self, hits: list[int], num_fresh: int) -> bool:
        revived = sum(1 for b in hits if self.device.is_evictable(b))
        return self.device.num_free - revived - num_fresh >= self.watermark_blocks

    def admit(self, seq: Sequence, hits: list[int]) -> int:
        """Start a block table from cached blocks; returns the number of tokens already computed."""
        assert seq.seq_id not in self.block_tables, f"sequence {seq.seq_id} already has blocks"
        for block_id in hits:
            self.device.incref(block_id)
        self.block_tables[seq.seq_id] = list(hits)
        self._hashes[seq.seq_id] = [self.device.block_hashes[b] for b in hits]
        self.prefix_queries += (len(seq.token_ids) - 1) // self.block_size
        self.prefix_hits += len(hits)
        return len(hits) * self.block_size

    # -- growth ------------------------------------------------------------------------------
    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        table = self.block_tables[seq.seq_id]
        needed = max(0, -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size) - len(table))
        return needed + (1 if self._needs_cow(seq, table) else 0)

    def _needs_cow(self, seq: Sequence, table: list[int]) -> bool:
        offset = seq.num_computed_tokens % self.block_size
        index = seq.num_computed_tokens // self.block_size
        return offset != 0 and index < len(table) and self.device.ref_counts[table[index]] > 1

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Grow the table to hold `num_new_tokens` more tokens; returns (src, dst) block copies
        for a shared, partially filled block that is about to be written (copy-on-write)."""
        table = self.block_tables[seq.seq_id]
        copies = []
        if self._needs_cow(seq, table):
            index = seq.num_computed_tokens // self.block_size
            src = table[index]
            dst = self.device.allocate()
            self.device.free(src)
            table[index] = dst
            copies.append((src, dst))
        while len(table) * self.block_size < seq.num_computed_tokens + num_new_tokens:
            table.append(self.device.allocate())
        return copies

    def mark_computed(self, seq: Sequence) -> None:
        """Register every block that `seq.num_computed_tokens` has made full for prefix reuse."""
        hashes, table, bs = self._hashes[seq.seq_id], self.block_tables[seq.seq_id], self.block_size
        for i in range(len(hashes), seq.num_computed_tokens // bs):
            h = block_hash(hashes[-1] if hashes else seq.cache_salt, seq.token_ids[i * bs:(i + 1) * bs])
            hashes.append(h)
            self.device.register(table[i], h)

    def trim(self, seq: Sequence) -> None:
        """Free the table's blocks wholly past the sequence's tokens: the slots of rejected drafts
        (their K/V is garbage, never registered: mark_computed stops at num_computed_tokens)."""
        table = self.block_tables[seq.seq_id]
        keep = max(-(-len(seq.token_ids) // self.block_size), len(self._hashes[seq.seq_id]))
        while len(table) > keep:
            self.device.free(table.pop())

    # -- forks and release -------------------------------------------------------------------
    def fork(self, parent: Sequence, child: Sequence) -> None:
        table = self.block_tables[parent.seq_id]
        for block_id in table:
            self.device.incref(block_id)
        self.block_tables[child.seq_id] = list(table)
        self._hashes[child.seq_id] = list(self._hashes[parent.seq_id])

    def free(self, seq: Sequence) -> None:
        for block_id in self.block_tables.pop(seq.seq_id, []):
            self.device.free(block_id)
        for block_id in self.cpu_tables.pop(seq.seq_id, []):
            self.cpu.free(block_id)
        self._hashes.pop(seq.seq_id, None)

    # -- swapping ----------------------------------------------------------------------------
    def _unique(self, tables: list[list[int]]) -> list[int]:
        return list(dict.fromkeys(b for t in tables for b in t))

    def can_swap_out(self, seqs: list[Sequence]) -> bool:
        if self.num_cpu_blocks == 0:
            return False
        needed = len(self._unique([self.block_tables[s.seq_id] for s in seqs]))
        return needed <= self.cpu.num_free

    def swap_out(self, seqs: list[Sequence]) -> list[tuple[int, int]]:
        mapping = self._move(seqs, self.block_tables, self.cpu_tables, self.device, self.cpu)
        return list(mapping.items())

    def can_swap_in(self, seqs: list[Sequence]) -> bool:
        needed = len(self._unique([self.cpu_tables[s.seq_id] for s in seqs])) + len(seqs)
        return self.device.num_free - needed >= self.watermark_blocks

    def swap_in(self, seqs: list[Sequence]) -> list[tuple[int, int]]:
        mapping = self._move(seqs, self.cpu_tables, self.block_tables, self.cpu, self.device)
        for seq in seqs:
            for block_id, h in zip(self.block_tables[seq.seq_id], self._hashes[seq.seq_id]):
                self.device.register(block_id, h)
        return list(mapping.items())

    @staticmethod
    def _move(seqs, src_tables, dst_tables, src_alloc, dst_alloc) -> dict[int, int]:
        """Re-home the tables of `seqs`, keeping blocks shared among them shared."""
        mapping: dict[int, int] = {}
        for seq in seqs:
            new_table = []
            for block_id in src_tables.pop(seq.seq_id):
                if block_id in mapping:
                    dst_alloc.incref(mapping[block_id])
                else:
                    mapping[block_id] = dst_alloc.allocate()
                new_table.append(mapping[block_id])
                src_alloc.free(block_id)
            dst_tables[seq.seq_id] = new_table
        return mapping

    # -- accounting --------------------------------------------------------------------------
    @property
    def usage(self) -> float:
        return self.device.num_used / self.device.num_blocks

    @property
    def cpu_usage(self) -> float:
        return self.cpu.num_used / self.num_cpu_blocks if self.num_cpu_blocks else 0.0

    def slot_usage(self, seqs: list[Sequence]) -> tuple[int, int]:
        """(allocated slots, filled slots) over the unique device blocks of `seqs`."""
        filled: dict[int, int] = {}
        for seq in seqs:
            table = self.block_tables.get(seq.seq_id, [])
            n = seq.num_computed_tokens
            for i, block_id in enumerate(table):
                used = max(0, min(self.block_size, n - i * self.block_size))
                filled[block_id] = max(filled.get(block_id, 0), used)
        return len(filled) * self.block_size, sum(filled.values())
