//! Free-space management of one node's memory: a best-fit free list with coalescing.
//!
//! Every extent is aligned to [`FreeList::align`] bytes (4 KiB by default) at both ends, so
//! freed space always coalesces back into the blocks it came from. Best fit (the smallest free
//! block that holds the request, lowest address among equals) keeps large blocks whole for
//! large requests; together with one extent per node per region, fragmentation stays low over
//! long alloc/free sequences (see the `fragmentation_*` tests).

use std::collections::{BTreeMap, BTreeSet};

/// The free space of one node: `[0, capacity)` minus its extents.
#[derive(Debug, Clone)]
pub struct FreeList {
    capacity: u64,
    align: u64,
    /// Free blocks by base → len.
    by_base: BTreeMap<u64, u64>,
    /// The same blocks by (len, base), for best fit.
    by_len: BTreeSet<(u64, u64)>,
    free: u64,
}

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

impl FreeList {
    /// All of `[0, capacity)` free; `align` must be a power of two. The capacity is rounded down
    /// to the alignment (the tail cannot hold an aligned extent anyway).
    pub fn new(capacity: u64, align: u64) -> Self {
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        let capacity = capacity & !(align - 1);
        let mut f = FreeList {
            capacity,
            align,
            by_base: BTreeMap::new(),
            by_len: BTreeSet::new(),
            free: 0,
        };
        if capacity > 0 {
            f.insert_block(0, capacity);
        }
        f
    }

    /// Usable bytes (capacity rounded down to the alignment).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The extent alignment.
    pub fn align(&self) -> u64 {
        self.align
    }

    /// Free bytes in all.
    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// The largest free block: the largest extent [`FreeList::alloc`] can give now.
    pub fn largest_free(&self) -> u64 {
        self.by_len.iter().next_back().map_or(0, |&(len, _)| len)
    }

    /// Number of free blocks (1 when nothing is allocated: no fragmentation).
    pub fn blocks(&self) -> usize {
        self.by_base.len()
    }

    /// The extent length `len` takes (rounded up to the alignment), or `None` on overflow.
    pub fn rounded(&self, len: u64) -> Option<u64> {
        align_up(len, self.align)
    }

    /// Takes `len` bytes (rounded up to the alignment) from the smallest block that holds them;
    /// returns the extent's base, or `None` when no block is large enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = self.rounded(len)?;
        if len == 0 {
            return None;
        }
        let &(blen, bbase) = self.by_len.range((len, 0)..).next()?;
        self.remove_block(bbase, blen);
        if blen > len {
            self.insert_block(bbase + len, blen - len);
        }
        Some(bbase)
    }

    /// Marks `[base, base + len)` used, wherever it is (rebuilding from stored extents).
    /// Returns `false` (changing nothing) when part of it is not free.
    pub fn reserve(&mut self, base: u64, len: u64) -> bool {
        let Some(len) = self.rounded(len) else {
            return false;
        };
        let Some(end) = base.checked_add(len) else {
            return false;
        };
        if len == 0 || base % self.align != 0 {
            return false;
        }
        let Some((&bbase, &blen)) = self.by_base.range(..=base).next_back() else {
            return false;
        };
        if bbase + blen < end {
            return false;
        }
        self.remove_block(bbase, blen);
        if bbase < base {
            self.insert_block(bbase, base - bbase);
        }
        if end < bbase + blen {
            self.insert_block(end, bbase + blen - end);
        }
        true
    }

    /// Gives `[base, base + len)` back, coalescing with its neighbours.
    ///
    /// # Panics
    ///
    /// When the range is not aligned, reaches past the capacity or overlaps free space (a
    /// double free): the coordinator's bookkeeping would be corrupt.
    pub fn free(&mut self, base: u64, len: u64) {
        let len = self.rounded(len).expect("extent length overflows");
        assert!(
            len > 0 && base % self.align == 0,
            "unaligned free {base:#x}+{len:#x}"
        );
        let end = base.checked_add(len).expect("extent end overflows");
        assert!(end <= self.capacity, "free past the capacity");
        let mut start = base;
        let mut stop = end;
        if let Some((&pbase, &plen)) = self.by_base.range(..=base).next_back() {
            assert!(pbase + plen <= base, "double free of {base:#x}");
            if pbase + plen == base {
                self.remove_block(pbase, plen);
                start = pbase;
            }
        }
        if let Some((&nbase, &nlen)) = self.by_base.range(base..).next() {
            assert!(nbase >= end, "double free of {base:#x}");
            if nbase == end {
                self.remove_block(nbase, nlen);
                stop = nbase + nlen;
            }
        }
        self.insert_block(start, stop - start);
    }

    fn insert_block(&mut self, base: u64, len: u64) {
        self.by_base.insert(base, len);
        self.by_len.insert((len, base));
        self.free += len;
    }

    fn remove_block(&mut self, base: u64, len: u64) {
        self.by_base.remove(&base);
        self.by_len.remove(&(len, base));
        self.free -= len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn best_fit_takes_the_smallest_block_that_fits() {
        let mut f = FreeList::new(1 << 20, 4096);
        let a = f.alloc(4096).unwrap();
        let b = f.alloc(8192).unwrap();
        let c = f.alloc(4096).unwrap();
        let _d = f.alloc(16384).unwrap();
        f.free(b, 8192); // an 8 KiB hole
        f.free(a, 4096); // coalesces with b's hole: 12 KiB at 0
        assert_eq!(f.blocks(), 2);
        f.free(c, 4096); // coalesces: 16 KiB at 0
        assert_eq!(f.blocks(), 2);
        // 16 KiB fits the hole exactly: best fit takes it, leaving the tail whole.
        assert_eq!(f.alloc(16384), Some(0));
        assert_eq!(f.blocks(), 1);
    }

    #[test]
    fn rounds_up_to_the_alignment_and_refuses_what_does_not_fit() {
        let mut f = FreeList::new(10 * 4096 + 100, 4096);
        assert_eq!(f.capacity(), 10 * 4096);
        assert_eq!(f.alloc(1), Some(0));
        assert_eq!(f.free_bytes(), 9 * 4096);
        assert_eq!(f.alloc(9 * 4096 + 1), None);
        assert_eq!(f.alloc(9 * 4096), Some(4096));
        assert_eq!(f.alloc(1), None);
        assert_eq!(f.alloc(0), None);
    }

    #[test]
    fn reserve_carves_stored_extents() {
        let mut f = FreeList::new(1 << 20, 4096);
        assert!(f.reserve(8192, 4096));
        assert!(!f.reserve(8192, 4096), "already used");
        assert!(!f.reserve(4096, 8192), "overlaps");
        assert!(!f.reserve(100, 4096), "unaligned");
        assert_eq!(f.free_bytes(), (1 << 20) - 4096);
        f.free(8192, 4096);
        assert_eq!(f.blocks(), 1);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut f = FreeList::new(1 << 20, 4096);
        let a = f.alloc(4096).unwrap();
        f.free(a, 4096);
        f.free(a, 4096);
    }

    #[test]
    fn fragmentation_random_alloc_free_coalesces_back_to_one_block() {
        let cap = 1u64 << 30;
        let mut f = FreeList::new(cap, 4096);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..10_000 {
            if !live.is_empty() && (rng.random_bool(0.5) || f.free_bytes() < cap / 4) {
                let i = rng.random_range(0..live.len());
                let (b, l) = live.swap_remove(i);
                f.free(b, l);
            } else {
                let len = rng.random_range(1..=(8u64 << 20));
                if let Some(b) = f.alloc(len) {
                    live.push((b, len));
                }
            }
        }
        for (b, l) in live.drain(..) {
            f.free(b, l);
        }
        assert_eq!(f.free_bytes(), cap);
        assert_eq!(f.blocks(), 1);
        assert_eq!(f.largest_free(), cap);
    }
}
