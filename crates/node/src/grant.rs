//! Which peer may touch which bytes of the arena (DESIGN.md, "Regions, grants and tenants").

use core::fmt;
use core::str::FromStr;

use crate::error::{Error, Result};

/// Whom a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerMatch<P> {
    /// Every peer: what `--open-window BASE:LEN` creates, so that any OmniXtend host can use
    /// the node like a plain memory device.
    Any,
    /// One peer (a MAC address on raw Ethernet, an address and port on UDP).
    Peer(P),
}

impl<P: PartialEq> PeerMatch<P> {
    /// Whether `peer` is covered.
    pub fn matches(&self, peer: &P) -> bool {
        match self {
            PeerMatch::Any => true,
            PeerMatch::Peer(p) => p == peer,
        }
    }
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Get and Intent(PrefetchRead).
    Read,
    /// Also PutFullData, PutPartialData, the atomics and Intent(PrefetchWrite).
    ReadWrite,
}

impl Access {
    /// Whether this access allows writes.
    pub fn allows_write(self) -> bool {
        self == Access::ReadWrite
    }
}

/// The alignment a grant's peer address and arena base must share: the largest TileLink
/// transfer, so that a naturally aligned request stays naturally aligned in the arena.
pub const GRANT_ADDRESS_ALIGN: u64 = 1 << oxmem_wire::tilelink::MAX_SIZE;

/// Permission for a peer to use `[base, base + len)` of the arena, which it addresses as
/// `[addr, addr + len)`.
///
/// Grants made on the command line use the arena's own addresses (`addr == base`). The
/// coordinator gives each of its grants an address range of its own, never used before, far
/// above the arena: a peer that acts on an old placement (a stripe since moved, memory since
/// freed and handed to another region) names addresses no grant holds any more, and is denied,
/// instead of reaching bytes that now belong to something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant<P> {
    pub peer: PeerMatch<P>,
    pub base: u64,
    pub len: u64,
    pub access: Access,
    /// The address peers use for the byte at `base`.
    pub addr: u64,
}

impl<P> Grant<P> {
    /// A grant for every peer (an open window).
    pub fn any(window: Window, access: Access) -> Self {
        Grant {
            peer: PeerMatch::Any,
            base: window.base,
            len: window.len,
            access,
            addr: window.base,
        }
    }

    /// A grant for one peer.
    pub fn peer(peer: P, window: Window, access: Access) -> Self {
        Grant {
            peer: PeerMatch::Peer(peer),
            base: window.base,
            len: window.len,
            access,
            addr: window.base,
        }
    }

    /// The same grant, addressed by peers at `addr` instead of its arena base.
    pub fn at(self, addr: u64) -> Self {
        Grant { addr, ..self }
    }

    /// Whether the peer addresses `[address, address + len)` are non-empty and lie inside
    /// this grant.
    pub fn covers(&self, address: u64, len: u64) -> bool {
        let (Some(end), Some(grant_end)) =
            (address.checked_add(len), self.addr.checked_add(self.len))
        else {
            return false;
        };
        len > 0 && address >= self.addr && end <= grant_end
    }

    /// The arena address of peer address `address` (which the grant must cover).
    pub fn translate(&self, address: u64) -> u64 {
        self.base + (address - self.addr)
    }
}

/// Names a grant in a [`GrantTable`], to remove it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(u64);

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grant#{}", self.0)
    }
}

/// The grants of a node.
///
/// `P` is the peer address type; the I/O engine uses `oxmem_net::PeerAddr`. This crate stays
/// generic so that it does not depend on the transports.
///
/// An access is allowed when **one** grant for that peer (or for any peer) covers the whole
/// range with enough access; a range that straddles two adjacent grants is refused. TileLink
/// accesses are naturally aligned powers of two, and a client splits its transfers at extent
/// (and so grant) boundaries, so this costs nothing in practice and keeps the rule simple.
/// Grants may overlap; lookup is a linear scan, in the order grants were added. Where grants of
/// different translations (peer address to arena address) overlap for a peer, the widest
/// access wins, and the first added among equals.
#[derive(Debug, Clone)]
pub struct GrantTable<P> {
    limit: u64,
    next_id: u64,
    grants: Vec<(GrantId, Grant<P>)>,
}

impl<P: PartialEq> GrantTable<P> {
    /// An empty table for an arena of `limit` bytes: no grant may reach past it.
    pub fn new(limit: u64) -> Self {
        GrantTable {
            limit,
            next_id: 0,
            grants: Vec::new(),
        }
    }

    /// The arena size grants must fit in.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Adds a grant.
    ///
    /// # Errors
    /// [`Error::InvalidGrant`] when the grant is empty, reaches past the arena, its peer
    /// addresses overflow 64 bits, or its peer address and base differ by other than a
    /// multiple of [`GRANT_ADDRESS_ALIGN`].
    pub fn add(&mut self, grant: Grant<P>) -> Result<GrantId> {
        let fits = grant
            .base
            .checked_add(grant.len)
            .is_some_and(|end| end <= self.limit);
        let addressable = grant.addr.checked_add(grant.len).is_some()
            && (grant.addr ^ grant.base) % GRANT_ADDRESS_ALIGN == 0;
        if grant.len == 0 || !fits || !addressable {
            return Err(Error::InvalidGrant {
                base: grant.base,
                len: grant.len,
                limit: self.limit,
            });
        }
        let id = GrantId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.grants.push((id, grant));
        Ok(id)
    }

    /// Removes (revokes) a grant, returning it; `None` when there is no such grant.
    pub fn remove(&mut self, id: GrantId) -> Option<Grant<P>> {
        let at = self.grants.iter().position(|(g, _)| *g == id)?;
        Some(self.grants.remove(at).1)
    }

    /// Removes every grant naming `peer` (not the open windows); returns how many.
    pub fn revoke_peer(&mut self, peer: &P) -> usize {
        let before = self.grants.len();
        self.grants
            .retain(|(_, g)| !matches!(&g.peer, PeerMatch::Peer(p) if p == peer));
        before - self.grants.len()
    }

    /// The grant named `id`.
    pub fn get(&self, id: GrantId) -> Option<&Grant<P>> {
        self.grants.iter().find(|(g, _)| *g == id).map(|(_, g)| g)
    }

    /// Every grant, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (GrantId, &Grant<P>)> {
        self.grants.iter().map(|(id, g)| (*id, g))
    }

    /// Number of grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether there are no grants.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The widest access one grant gives `peer` over all of the peer addresses
    /// `[address, address + len)`, or `None` when no single grant covers it (or it is empty).
    pub fn access(&self, peer: &P, address: u64, len: u64) -> Option<Access> {
        self.resolve(peer, address, len).map(|(access, _)| access)
    }

    /// As [`access`](Self::access), with the arena address the range starts at under that
    /// grant.
    pub fn resolve(&self, peer: &P, address: u64, len: u64) -> Option<(Access, u64)> {
        let mut best: Option<&Grant<P>> = None;
        for (_, g) in &self.grants {
            if g.peer.matches(peer)
                && g.covers(address, len)
                && best.is_none_or(|b| g.access > b.access)
            {
                best = Some(g);
            }
        }
        best.map(|g| (g.access, g.translate(address)))
    }

    /// Whether `peer` may read (or, with `write`, write) all of `[address, address + len)`.
    pub fn check(&self, peer: &P, address: u64, len: u64, write: bool) -> bool {
        self.access(peer, address, len)
            .is_some_and(|a| !write || a.allows_write())
    }
}

/// An address range written `BASE:LEN`, as `--open-window 0:1GiB` or `0x1000:4KiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub base: u64,
    pub len: u64,
}

impl Window {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        // Construction through `from_str` refuses windows that overflow.
        self.base.saturating_add(self.len)
    }
}

impl FromStr for Window {
    type Err = Error;

    /// Parses `BASE:LEN`; both sides are sizes as [`parse_size`] reads them.
    ///
    /// # Errors
    /// [`Error::InvalidWindow`] when there is no `:`, a side is not a size, the length is zero
    /// or the end overflows 64 bits.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidWindow {
            input: s.to_owned(),
            reason,
        };
        let (base, len) = s.split_once(':').ok_or(invalid("expected BASE:LEN"))?;
        let base = parse_size(base).map_err(|_| invalid("BASE is not a number or size"))?;
        let len = parse_size(len).map_err(|_| invalid("LEN is not a number or size"))?;
        if len == 0 {
            return Err(invalid("LEN must not be zero"));
        }
        if base.checked_add(len).is_none() {
            return Err(invalid("BASE + LEN does not fit in 64 bits"));
        }
        Ok(Window { base, len })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{:#x}", self.base, self.len)
    }
}

/// Parses a byte count: a decimal or `0x` hexadecimal number (underscores allowed), optionally
/// followed by a binary unit: `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (case-insensitive) or
/// `B`. So `8GiB`, `4k`, `0x1000`, `1_048_576`, `512B`.
///
/// `KB`, `MB`, `GB` and `TB` are refused: some read them as powers of 1000, others of 1024.
///
/// # Errors
/// [`Error::InvalidSize`] on an empty string, a bad number or unit, or a value that overflows
/// 64 bits.
pub fn parse_size(s: &str) -> Result<u64> {
    let invalid = |reason| Error::InvalidSize {
        input: s.to_owned(),
        reason,
    };
    let t = s.trim();
    let (digits, radix, rest) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => {
            let end = hex
                .find(|c: char| !(c.is_ascii_hexdigit() || c == '_'))
                .unwrap_or(hex.len());
            (&hex[..end], 16, &hex[end..])
        }
        None => {
            let end = t
                .find(|c: char| !(c.is_ascii_digit() || c == '_'))
                .unwrap_or(t.len());
            (&t[..end], 10, &t[end..])
        }
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or(invalid("not a number"))?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(invalid("does not fit in 64 bits"))?;
        any = true;
    }
    if !any {
        return Err(invalid("expected a number"));
    }
    let shift = match rest.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(invalid(
                "ambiguous unit: write KiB, MiB, GiB or TiB (powers of 1024)",
            ));
        }
        _ => return Err(invalid("unknown unit: use B, KiB, MiB, GiB or TiB")),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or(invalid("does not fit in 64 bits"))
}
