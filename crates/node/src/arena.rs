//! The node's DRAM: one anonymous mapping, on huge pages when the host has them.

use core::fmt;
use std::fs;

use memmap2::{Advice, MmapMut, MmapOptions};

use crate::error::{Error, Result};

/// Used when `/proc/meminfo` cannot be read: the x86-64 and arm64 (4 KiB granule) default.
const DEFAULT_HUGE_PAGE: u64 = 2 << 20;

/// How to map an [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArenaOptions {
    /// Try explicit huge pages (`MAP_HUGETLB`, the host's default huge page size) first. They
    /// are used only when the capacity is a whole number of huge pages and the host has enough
    /// reserved (`vm.nr_hugepages`); otherwise the arena falls back to ordinary pages with
    /// transparent-huge-page advice, and [`Arena::backing`] says so.
    pub huge_pages: bool,
    /// Lock the arena in memory (`mlock`) so it is never swapped out. Failing to lock is an
    /// error ([`Error::Lock`]), not a silent downgrade: map again without it to go on unlocked.
    pub lock: bool,
}

/// What kind of pages back the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// Explicit huge pages (`MAP_HUGETLB`) of this many bytes.
    HugePages { page_size: u64 },
    /// Ordinary pages advised `MADV_HUGEPAGE`, with transparent huge pages enabled on the host.
    /// The kernel assembles huge pages when it can; it does not promise to.
    TransparentHugePages,
    /// Ordinary pages.
    Normal,
}

/// What the host gave the arena, for `oxmem node` to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backing {
    pub pages: PageKind,
    /// Whether the arena is locked in memory.
    pub locked: bool,
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pages {
            PageKind::HugePages { page_size } => {
                write!(f, "huge pages ({} KiB)", page_size / 1024)?;
            }
            PageKind::TransparentHugePages => write!(f, "transparent huge pages")?,
            PageKind::Normal => write!(f, "normal pages")?,
        }
        if self.locked {
            write!(f, ", locked")?;
        }
        Ok(())
    }
}

/// The memory a node lends: an anonymous, zero-filled mapping of a fixed capacity.
///
/// Addresses are offsets from the start of the arena (node address 0 is its first byte). Every
/// accessor is bounds-checked with overflow-safe arithmetic and returns `None` or
/// [`Error::OutOfArena`] rather than panicking.
#[derive(Debug)]
pub struct Arena {
    map: MmapMut,
    backing: Backing,
}

impl Arena {
    /// Maps `capacity` bytes of ordinary pages with transparent-huge-page advice, unlocked.
    ///
    /// # Errors
    /// As [`Arena::with_options`].
    pub fn new(capacity: u64) -> Result<Self> {
        Self::with_options(capacity, ArenaOptions::default())
    }

    /// Maps `capacity` bytes as `options` asks.
    ///
    /// # Errors
    /// [`Error::ZeroCapacity`]; [`Error::CapacityTooLarge`] beyond `isize::MAX`;
    /// [`Error::Map`] when the host refuses the mapping; [`Error::Lock`] when `options.lock`
    /// is set and `mlock` fails.
    pub fn with_options(capacity: u64, options: ArenaOptions) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::ZeroCapacity);
        }
        // A Rust slice cannot be longer than isize::MAX bytes; memmap2 refuses those too.
        let len = usize::try_from(capacity)
            .ok()
            .filter(|&l| isize::try_from(l).is_ok())
            .ok_or(Error::CapacityTooLarge(capacity))?;
        let huge_page = huge_page_size();
        let explicit = if options.huge_pages && capacity % huge_page == 0 {
            // Fails with ENOMEM when too few huge pages are reserved: fall back below.
            MmapOptions::new().len(len).huge(None).map_anon().ok()
        } else {
            None
        };
        let (map, pages) = match explicit {
            Some(map) => (
                map,
                PageKind::HugePages {
                    page_size: huge_page,
                },
            ),
            None => {
                let map = MmapOptions::new()
                    .len(len)
                    .map_anon()
                    .map_err(|source| Error::Map { capacity, source })?;
                let advised = map.advise(Advice::HugePage).is_ok();
                let pages = if advised && capacity >= huge_page && transparent_huge_pages_on() {
                    PageKind::TransparentHugePages
                } else {
                    PageKind::Normal
                };
                (map, pages)
            }
        };
        if options.lock {
            map.lock().map_err(Error::Lock)?;
        }
        Ok(Arena {
            map,
            backing: Backing {
                pages,
                locked: options.lock,
            },
        })
    }

    /// Number of bytes in the arena.
    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// What kind of pages back the arena and whether it is locked.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The whole arena.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The whole arena, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The bytes `[address, address + len)`, or `None` when any of them is outside the arena.
    pub fn get(&self, address: u64, len: u64) -> Option<&[u8]> {
        let range = self.range(address, len)?;
        self.map.get(range)
    }

    /// The bytes `[address, address + len)` writable, or `None` when any of them is outside
    /// the arena.
    pub fn get_mut(&mut self, address: u64, len: u64) -> Option<&mut [u8]> {
        let range = self.range(address, len)?;
        self.map.get_mut(range)
    }

    /// Whether `[address, address + len)` lies inside the arena.
    pub fn contains(&self, address: u64, len: u64) -> bool {
        self.range(address, len).is_some()
    }

    /// Copies `out.len()` bytes starting at `address` into `out`.
    ///
    /// # Errors
    /// [`Error::OutOfArena`] when the range does not fit.
    pub fn read(&self, address: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len() as u64;
        let src = self
            .get(address, len)
            .ok_or(self.out_of_arena(address, len))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Copies `data` into the arena at `address`.
    ///
    /// # Errors
    /// [`Error::OutOfArena`] when the range does not fit.
    pub fn write(&mut self, address: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let err = self.out_of_arena(address, len);
        self.get_mut(address, len).ok_or(err)?.copy_from_slice(data);
        Ok(())
    }

    /// Sets `len` bytes from `address` to `byte` (zero them before memory is lent again).
    ///
    /// # Errors
    /// [`Error::OutOfArena`] when the range does not fit.
    pub fn fill(&mut self, address: u64, len: u64, byte: u8) -> Result<()> {
        let err = self.out_of_arena(address, len);
        self.get_mut(address, len).ok_or(err)?.fill(byte);
        Ok(())
    }

    fn range(&self, address: u64, len: u64) -> Option<core::ops::Range<usize>> {
        let end = address.checked_add(len)?;
        if end > self.capacity() {
            return None;
        }
        Some(usize::try_from(address).ok()?..usize::try_from(end).ok()?)
    }

    fn out_of_arena(&self, address: u64, len: u64) -> Error {
        Error::OutOfArena {
            address,
            len,
            capacity: self.capacity(),
        }
    }
}

/// The host's default huge page size, from `/proc/meminfo`.
fn huge_page_size() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("Hugepagesize:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024).filter(|&b| b > 0)
        })
        .unwrap_or(DEFAULT_HUGE_PAGE)
}

/// Whether transparent huge pages are enabled for advised mappings ("always" or "madvise").
fn transparent_huge_pages_on() -> bool {
    fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]") || mode.contains("[madvise]"))
}
