"""The KV cache: each block's keys and values for the positions a forward pass has read, so that the
next call reads only the new tokens (openai/gpt-2's `past`, kept in preallocated buffers).

A cache is a value: gpt2() never changes the cache it is given, it returns a new one with the new
positions added. The new positions go into spare room at the end of the same buffers when no other
cache has claimed that room yet (the usual case: each step continues the cache the step before made),
and into a fresh copy otherwise, with room for twice the positions it holds (so the room doubles as a
text grows). So a cache of a shared prefix can be kept and continued twice, and decoding writes one
position a step, copying the whole cache only when the room runs out.

    cache[i]      block i's (k, v), each [B, n_head, n_past, n_embd/n_head] float32, read-only views
    len(cache)    n_layer;  cache.n_past: positions held;  cache.batch_size: B
"""
import numpy as np


class _Buffers:
    """Preallocated k and v for every block, [B, n_head, capacity, d] each, and how much of them is claimed.

    The capacity is kept within twice the positions held: np.empty's pages count in the process's memory
    only once touched, but NumPy asks for huge pages (2 MB) for arrays of 4 MB or more, and the first write
    into one zeroes all of it.
    """

    def __init__(self, n_layer, batch_size, n_head, capacity, d):
        shape = (batch_size, n_head, capacity, d)
        self.k = [np.empty(shape, dtype=np.float32) for _ in range(n_layer)]
        self.v = [np.empty(shape, dtype=np.float32) for _ in range(n_layer)]
        self.claimed = 0  # positions [0, claimed) belong to some cache; a cache may write beyond only its own end

    @property
    def capacity(self):
        return self.k[0].shape[2]


class KVCache:
    def __init__(self, buffers, n_past):
        self._buffers, self.n_past = buffers, n_past

    @classmethod
    def empty(cls, n_layer, batch_size, n_head, d, capacity):
        """A cache holding no positions, with room for `capacity` (it grows, by copying, when it needs more)."""
        return cls(_Buffers(n_layer, batch_size, n_head, capacity, d), 0)

    def __len__(self):
        return len(self._buffers.k)

    def __getitem__(self, i):  # -> (k, v), each [B, n_head, n_past, d]
        return self._view(self._buffers.k[i]), self._view(self._buffers.v[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _view(self, buffer):
        view = buffer[:, :, : self.n_past]
        view.flags.writeable = False
        return view

    @property
    def batch_size(self):
        return self._buffers.k[0].shape[0]

    @property
    def shape(self):  # (n_layer, B, n_head, n_past, d)
        _, n_head, _, d = self._buffers.k[0].shape
        return len(self), self.batch_size, n_head, self.n_past, d

    def extended(self, n_new, limit):
        """A cache of n_past + n_new positions whose first n_past are this cache's, and whose last n_new are
        for the caller to write (through writable()). It shares this cache's buffers when they have room and no
        other cache has claimed it; otherwise it is a copy, with room for twice as many positions as it holds
        (so that decoding copies the cache only now and then), up to `limit` (n_ctx)."""
        buffers, n_all = self._buffers, self.n_past + n_new
        if buffers.claimed != self.n_past or n_all > buffers.capacity:
            buffers = self._copy(room(n_all, limit))
        buffers.claimed = n_all
        return KVCache(buffers, n_all)

    def first(self, n):
        """A cache of this one's first n positions, sharing its buffers: continuing it copies them, as the rest is
        claimed (a prompt that shares only the start of a cached one)."""
        assert 0 <= n <= self.n_past
        return KVCache(self._buffers, n)

    def writable(self, i):  # -> (k, v) of block i, [B, n_head, n_past, d], for the forward pass to fill in
        return self._buffers.k[i][:, :, : self.n_past], self._buffers.v[i][:, :, : self.n_past]

    def _copy(self, capacity, rows=slice(None), start=0):
        """New buffers holding positions [start, n_past) of these rows, from position 0, with room for capacity."""
        n_layer, _, n_head, n_past, d = self.shape
        batch_size = len(np.arange(self.batch_size)[rows])
        buffers = _Buffers(n_layer, batch_size, n_head, capacity, d)
        for old, new in zip(self._buffers.k + self._buffers.v, buffers.k + buffers.v):
            new[:, :, : n_past - start] = old[rows, :, start:n_past]
        buffers.claimed = n_past - start
        return buffers

    def take(self, rows, start=0, capacity=None):
        """A new cache of the given batch rows, in that order (repeats allowed), holding positions [start, n_past):
        [0, 0, 0] makes three copies of row 0's cache, to continue one prompt three ways; reordering rows is what
        beam search needs; `start` drops positions that are padding in every row taken. It has room for `capacity`
        positions in all (default: as much as this cache's buffers): beam search, which takes its rows afresh
        every step, asks for one more than it holds, as fresh pages are costly (huge pages make them 2 MB each)."""
        rows = np.asarray(rows, dtype=np.intp)
        if rows.ndim != 1 or len(rows) == 0 or rows.min() < -self.batch_size or rows.max() >= self.batch_size:
            raise ValueError(f"rows must be a non-empty list of row numbers below the batch size {self.batch_size}")
        if not 0 <= start <= self.n_past:
            raise ValueError(f"start must be from 0 to n_past ({self.n_past}), got {start}")
        capacity = self._buffers.capacity if capacity is None else max(capacity, self.n_past - start)
        return KVCache(self._copy(capacity, rows, start), self.n_past - start)

    def __repr__(self):
        n_layer, batch_size, n_head, n_past, d = self.shape
        return f"KVCache(n_layer={n_layer}, B={batch_size}, n_head={n_head}, n_past={n_past}, d={d})"


def merge_rows(parts, batch_size, limit):
    """One batch cache from the rows of several: parts = [(rows, cache, mask), ...] -> (cache, mask).

    Row rows[j] of the result is row j of that part's cache, with its mask ([B_part, n_past_part], False at
    padding); every row is right-aligned to the widest part, and the positions to its left are padding
    (zeros, never attended to: a masked key's weight is exactly 0, and 0 times garbage could be NaN).
    """
    width = max(cache.n_past for _, cache, _ in parts)
    n_layer, _, n_head, _, d = parts[0][1].shape
    buffers = _Buffers(n_layer, batch_size, n_head, room(width, limit), d)
    mask = np.zeros((batch_size, width), dtype=bool)
    for rows, cache, part_mask in parts:
        n = cache.n_past
        mask[rows, width - n :] = part_mask
        for new, old in zip(buffers.k + buffers.v, cache._buffers.k + cache._buffers.v):
            new[rows, :, : width - n] = 0
            new[rows, :, width - n : width] = old[:, :, :n]
    buffers.claimed = width
    return KVCache(buffers, width), mask


def room(n_positions, limit):
    """The capacity a cache of n_positions gets when it is made or copied: twice that, up to `limit` (n_ctx), so
    that decoding copies it only now and then; never less than it holds."""
    return max(n_positions, min(limit, 2 * n_positions))


def kv_cache_bytes(n_layer, n_embd, batch_size, n_positions):
    """Bytes of float32 keys and values for n_positions of a batch: 124M at n_ctx 1024 is 75.5 MB a row."""
    return 2 * n_layer * batch_size * n_positions * n_embd * 4
