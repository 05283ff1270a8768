//! Splitting transfers of any length and alignment into TileLink messages.
//!
//! TileLink moves power-of-two sizes at addresses aligned to their size. A read of any range
//! becomes the largest aligned power-of-two pieces that fit one message. A write does the same
//! over its 8-byte-aligned middle; its unaligned head and tail become PutPartialData on the
//! 8-byte beat that holds them, with a byte mask, so an odd write costs at most two extra
//! messages (or, with partial writes off, for peers that lack PutPartialData, more and smaller
//! PutFullData pieces).

/// One message's share of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Message address (aligned to `1 << size`).
    pub address: u64,
    /// log2 of the message's byte count.
    pub size: u8,
    /// Offset of the piece's first byte in the caller's buffer.
    pub offset: usize,
    /// Bytes of the caller's buffer this piece covers.
    pub len: usize,
    /// Offset of those bytes inside the message (non-zero only for a partial beat).
    pub skip: usize,
    /// Written with PutPartialData (only `skip..skip+len` of the beat is enabled).
    pub partial: bool,
}

/// log2 of the largest power of two that divides `address` (64 for 0).
fn alignment(address: u64) -> u32 {
    address.trailing_zeros()
}

/// Pieces of a read of `len` bytes at `address`, each at most `1 << max_size` bytes.
pub fn read_pieces(address: u64, len: usize, max_size: u8) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut at = address;
    let mut offset = 0usize;
    while offset < len {
        let left = (len - offset) as u64;
        let size = alignment(at)
            .min(63 - left.leading_zeros())
            .min(u32::from(max_size));
        let n = 1usize << size;
        out.push(Piece {
            address: at,
            size: size as u8,
            offset,
            len: n,
            skip: 0,
            partial: false,
        });
        at += n as u64;
        offset += n;
    }
    out
}

/// Pieces of a write of `len` bytes at `address`.
pub fn write_pieces(address: u64, len: usize, max_size: u8, partial_writes: bool) -> Vec<Piece> {
    if !partial_writes || len == 0 {
        return read_pieces(address, len, max_size);
    }
    let end = address + len as u64;
    let mut out = Vec::new();
    let head_beat = address & !7;
    let body_start = if address % 8 == 0 {
        address
    } else {
        head_beat + 8
    };
    let body_end = (end & !7).max(body_start);
    if address % 8 != 0 {
        let stop = end.min(body_start);
        out.push(Piece {
            address: head_beat,
            size: 3,
            offset: 0,
            len: (stop - address) as usize,
            skip: (address - head_beat) as usize,
            partial: true,
        });
    }
    if body_end > body_start {
        for mut p in read_pieces(body_start, (body_end - body_start) as usize, max_size) {
            p.offset += (body_start - address) as usize;
            out.push(p);
        }
    }
    if end > body_end {
        let beat = end & !7;
        let from = beat.max(address);
        out.push(Piece {
            address: beat,
            size: 3,
            offset: (from - address) as usize,
            len: (end - from) as usize,
            skip: (from - beat) as usize,
            partial: true,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte covered exactly once, every piece aligned and within the size limit.
    fn check(address: u64, len: usize, pieces: &[Piece], max_size: u8) {
        let mut covered = vec![0u8; len];
        for p in pieces {
            assert_eq!(p.address % (1 << p.size), 0, "{p:?} aligned");
            assert!(p.size <= max_size.max(3), "{p:?} within the limit");
            assert!(p.skip + p.len <= 1 << p.size, "{p:?} inside its message");
            assert_eq!(
                p.address + p.skip as u64,
                address + p.offset as u64,
                "{p:?} addresses agree"
            );
            for b in &mut covered[p.offset..p.offset + p.len] {
                *b += 1;
            }
        }
        assert!(
            covered.iter().all(|&c| c == 1),
            "{address:#x}+{len}: {pieces:?}"
        );
    }

    #[test]
    fn reads_cover_every_byte_once_with_aligned_pieces() {
        for address in 0..40u64 {
            for len in 1..200 {
                check(address, len, &read_pieces(address, len, 6), 6);
            }
        }
    }

    #[test]
    fn aligned_reads_take_the_largest_pieces() {
        let p = read_pieces(0x1000, 4096, 12);
        assert_eq!(p.len(), 1);
        let p = read_pieces(0x1000, 1 << 20, 12);
        assert_eq!(p.len(), 256);
        assert!(p.iter().all(|p| p.size == 12));
    }

    #[test]
    fn writes_cover_every_byte_once_and_use_partial_beats_only_at_the_edges() {
        for address in 0..40u64 {
            for len in 1..200 {
                let pieces = write_pieces(address, len, 6, true);
                check(address, len, &pieces, 6);
                let partial = pieces.iter().filter(|p| p.partial).count();
                assert!(partial <= 2);
                assert!(pieces.iter().filter(|p| !p.partial).all(|p| p.size >= 3));
            }
        }
    }

    #[test]
    fn an_odd_write_inside_one_beat_is_one_partial_message() {
        let p = write_pieces(0x103, 3, 12, true);
        assert_eq!(
            p,
            vec![Piece {
                address: 0x100,
                size: 3,
                offset: 0,
                len: 3,
                skip: 3,
                partial: true
            }]
        );
    }

    #[test]
    fn without_partial_writes_pieces_are_plain_power_of_two_puts() {
        let p = write_pieces(0x103, 7, 12, false);
        assert!(p.iter().all(|p| !p.partial && p.skip == 0));
        check(0x103, 7, &p, 12);
    }
}
