//! The crate's one error type.

use std::io;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in the node core.
///
/// A peer cannot cause any of these: what a peer gets wrong is answered on the wire with a
/// TileLink `denied` response and counted in [`Counters`](crate::Counters). The variants are the
/// caller's mistakes (a bad capacity, grant or size string) and the host's refusals (mmap, mlock).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for an arena of zero bytes.
    #[error("arena capacity must be at least one byte")]
    ZeroCapacity,

    /// The caller asked for more bytes than this host's address space can map.
    #[error("arena capacity of {0} bytes is more than this host can map")]
    CapacityTooLarge(u64),

    /// The host refused the mapping (usually not enough memory, or an overcommit limit).
    #[error("mapping a {capacity}-byte arena failed: {source}")]
    Map {
        capacity: u64,
        #[source]
        source: io::Error,
    },

    /// The host refused to lock the arena in memory (`mlock`; see `ulimit -l` and
    /// `CAP_IPC_LOCK`).
    #[error("locking the arena in memory failed: {0}")]
    Lock(#[source] io::Error),

    /// The caller named bytes outside the arena.
    #[error("range {address:#x}+{len:#x} is outside the {capacity:#x}-byte arena")]
    OutOfArena {
        address: u64,
        len: u64,
        capacity: u64,
    },

    /// The caller tried to add a grant that is empty or reaches past the arena (or whose
    /// peer addresses overflow, or are not aligned like its base).
    #[error(
        "grant {base:#x}+{len:#x} is empty, reaches past the {limit:#x}-byte arena, or has peer \
         addresses that overflow or are not aligned like its base"
    )]
    InvalidGrant { base: u64, len: u64, limit: u64 },

    /// The caller gave a size string [`parse_size`](crate::parse_size) cannot read.
    #[error("invalid size {input:?}: {reason}")]
    InvalidSize { input: String, reason: &'static str },

    /// The caller gave a `BASE:LEN` string [`Window`](crate::Window) cannot read.
    #[error("invalid window {input:?}: {reason}")]
    InvalidWindow { input: String, reason: &'static str },
}
