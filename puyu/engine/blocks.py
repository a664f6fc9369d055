"""The KV block manager: a free list of fixed-size blocks, reference counts and prefix caching.

Every sequence owns a block table (block ids in position order).  A block that
is completely filled with computed tokens gets a chain hash (its tokens plus
the hash of the block before it), so a later request whose prompt starts with
the same tokens reuses the block instead of recomputing it.  Blocks whose
reference count drops to zero go back to the free list but keep their cached
contents until they are handed out again (least recently freed first), as in
vLLM's and LMDeploy's block managers.
"""

from __future__ import annotations

from collections import OrderedDict


def block_hashes(tokens: list, block_size: int) -> list[int]:
    """Chain hashes of the full blocks of ``tokens`` (ids, or any hashable key per position: images are keyed by pixels)."""
    hashes, parent = [], 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return hashes


class BlockManager:
    """Hands out block ids; see the module docstring."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.ref = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.hash_of: dict[int, int] = {}
        self.block_of: dict[int, int] = {}
        self.prefix_hits = 0  # blocks reused, for metrics

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences."""
        return 1 - len(self.free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take(self, block: int) -> None:
        self.ref[block] += 1
        self.free.pop(block, None)

    def match_prefix(self, tokens: list) -> list[int]:
        """Take the cached blocks that hold a prefix of ``tokens`` (full blocks only)."""
        if not self.prefix_caching:
            return []
        found = []
        for h in block_hashes(tokens, self.block_size):
            block = self.block_of.get(h)
            if block is None:
                break
            self._take(block)
            found.append(block)
        self.prefix_hits += len(found)
        return found

    def allocate(self, count: int) -> list[int]:
        """``count`` fresh blocks; the caller checks :attr:`num_free` first."""
        if count > len(self.free):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self.free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self.free.popitem(last=False)
            if block in self.hash_of:  # evict its cached contents
                del self.block_of[self.hash_of.pop(block)]
            self.ref[block] = 1
            blocks.append(block)
        return blocks

    def extend(self, table: list[int], num_tokens: int) -> bool:
        """Append fresh blocks to the block table ``table`` until it holds ``num_tokens`` tokens; False (nothing taken)
        when not enough are free."""
        need = self.blocks_for(num_tokens) - len(table)
        if need > len(self.free):
            return False
        if need > 0:
            table += self.allocate(need)
        return True

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):  # the tail of a sequence is the least likely to be shared
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` holds the full block with ``block_hash`` (for later reuse)."""
        if self.prefix_caching and block_hash not in self.block_of and block not in self.hash_of:
            self.block_of[block_hash] = block
            self.hash_of[block] = block_hash
