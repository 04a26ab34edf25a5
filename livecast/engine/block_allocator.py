"""Physical KV blocks: ref counts, a free list, and hash-addressed prefix-cache blocks with LRU eviction."""
from __future__ import annotations

from collections import OrderedDict, deque


class NoFreeBlocksError(RuntimeError):
    pass


class BlockAllocator:
    """Hands out block ids in [0, num_blocks).

    A block whose ref count drops to zero stays addressable by its content hash (prefix caching)
    and sits in an LRU list; it is only reused, and its hash forgotten, once no never-hashed
    block is left.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._by_hash: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        elif self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            del self._by_hash[self.block_hashes[block_id]]
            self.block_hashes[block_id] = None
        else:
            raise NoFreeBlocksError("out of KV cache blocks")
        self.ref_counts[block_id] = 1
        return block_id

    def incref(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            # a cached block coming back into use leaves the eviction list
            del self._evictable[block_id]
        self.ref_counts[block_id] += 1

    def free(self, block_id: int) -> None:
        count = self.ref_counts[block_id]
        if count <= 0:
            raise RuntimeError(f"double free of block {block_id}")
        self.ref_counts[block_id] = count - 1
        if count == 1:
            if self.block_hashes[block_id] is not None:
                self._evictable[block_id] = None
            else:
                self._free.append(block_id)

    def lookup(self, block_hash: int) -> int | None:
        return self._by_hash.get(block_hash) if self.enable_caching else None

    def is_evictable(self, block_id: int) -> bool:
        return self.ref_counts[block_id] == 0 and block_id in self._evictable

    def register(self, block_id: int, block_hash: int) -> None:
        """Make a full, computed block findable by content. Duplicates keep the first block."""
        if not self.enable_caching or self.block_hashes[block_id] is not None or block_hash in self._by_hash:
            return
        self.block_hashes[block_id] = block_hash
        self._by_hash[block_hash] = block_id

    def evictable_ids(self) -> list[int]:
        """Cached, unreferenced blocks in eviction order (first evicted first)."""
        return list(self._evictable)
