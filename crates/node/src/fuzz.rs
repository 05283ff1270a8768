//! Body of the executor's fuzz target, kept here so the corpus can be replayed as an ordinary
//! test (as `oxmem_wire::fuzz`).

use oxmem_wire::{ByteOrder, Channel, FLIT, Message, Op, Payload, data_beats, mask_flits};

use crate::arena::Arena;
use crate::executor::{Counters, Executor};
use crate::grant::{Access, Grant, PeerMatch};

const ARENA: u64 = 4096;
/// What every byte outside the grants holds.
const SENTINEL: u8 = 0xa5;

/// `(peer, base, len, writable, addr)`: the peer addresses `[addr, addr + len)` reach arena
/// `[base, base + len)`; `None` is an open window. Peer 3's grant is at addresses of its own,
/// above the arena, as the coordinator's are. Bytes outside all of these stay [`SENTINEL`]
/// for ever.
const GRANTS: [(Option<u8>, u64, u64, bool, u64); 6] = [
    (Some(1), 0x400, 0x400, true, 0x400),
    (Some(1), 0x800, 0x200, false, 0x800),
    (Some(2), 0xa00, 0x200, true, 0xa00),
    (None, 0xc00, 0x100, false, 0xc00),
    (None, 0xd00, 0x100, true, 0xd00),
    (Some(3), 0xe00, 0x200, true, 0x8e00),
];

/// An independent statement of the grant rule: one grant covers the whole non-empty range.
/// Returns the arena address the range starts at under it.
fn allowed(peer: u8, address: u64, len: u64, write: bool) -> Option<u64> {
    let end = address.checked_add(len)?;
    if len == 0 {
        return None;
    }
    GRANTS
        .iter()
        .find(|&&(p, _, glen, writable, addr)| {
            p.is_none_or(|p| p == peer)
                && address >= addr
                && end <= addr + glen
                && (writable || !write)
        })
        .map(|&(_, base, _, _, addr)| base + (address - addr))
}

/// Feeds messages made from `data` to an executor over a 4 KiB arena with a few grants for
/// peers 1 and 2 and two open windows, and checks after every message that:
///
/// - every reply is a well-formed channel D message (it encodes) that repeats the request's
///   source and size;
/// - a denied data reply is corrupt and all zeros; a reply that is not denied answers a range
///   the grants allow (writes only where writable);
/// - a Get or atomic reply carries exactly the arena's bytes (the old value), in its active
///   lanes only;
/// - no byte changed outside the request's range, and none outside a writable grant.
///
/// Each message starts with a control byte: bits 1:0 pick the peer (0 to 3), bit 2 picks
/// between parsing a wire message (byte order from bit 3) and building one from fields.
///
/// # Panics
/// When the executor breaks one of these rules.
pub fn fuzz_execute(data: &[u8]) {
    let _ = fuzz_execute_counted(data);
}

/// As [`fuzz_execute`], returning the executor's counters so that a test can tell which paths
/// the input reached; `None` when the 4 KiB arena cannot be mapped.
///
/// # Panics
/// When the executor breaks one of the rules [`fuzz_execute`] lists.
pub fn fuzz_execute_counted(data: &[u8]) -> Option<Counters> {
    let arena = Arena::new(ARENA).ok()?;
    let mut exec: Executor<u8> = Executor::new(arena);
    exec.arena_mut().as_mut_slice().fill(SENTINEL);
    for (i, &(peer, base, len, writable, addr)) in GRANTS.iter().enumerate() {
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let peer = peer.map_or(PeerMatch::Any, PeerMatch::Peer);
        exec.grants_mut()
            .add(Grant {
                peer,
                base,
                len,
                access,
                addr,
            })
            .expect("fixture grants fit the arena");
        let pattern = (i as u8 + 1).wrapping_mul(0x11);
        exec.arena_mut().fill(base, len, pattern).expect("fits");
    }

    let mut rest = data;
    let mut scratch = Vec::new();
    while let Some((&control, tail)) = rest.split_first() {
        let peer = control & 3;
        let (consumed, request) = if control & 4 == 0 {
            let order = if control & 8 == 0 {
                ByteOrder::Spec
            } else {
                ByteOrder::Memory
            };
            match Message::parse(tail, order) {
                Ok(m) => (m.buffer_len(), Some(m)),
                Err(_) => (FLIT, None),
            }
        } else {
            build(tail, &mut scratch)
        };
        rest = tail.get(consumed..).unwrap_or_default();
        if let Some(request) = request {
            check_one(&mut exec, peer, &request);
        }
    }
    Some(*exec.counters())
}

/// A message from the fields `[op, param, size, address lo, address hi, flags, seed]`; its
/// data and mask bytes come from a generator seeded with `seed`, so a message always takes
/// seven bytes of input.
fn build<'a>(data: &[u8], scratch: &'a mut Vec<u8>) -> (usize, Option<Message<'a>>) {
    const OPS: [(Channel, Op); 10] = [
        (Channel::A, Op::Get),
        (Channel::A, Op::PutFullData),
        (Channel::A, Op::PutPartialData),
        (Channel::A, Op::ArithmeticData),
        (Channel::A, Op::LogicalData),
        (Channel::A, Op::Intent),
        (Channel::A, Op::AcquireBlock),
        (Channel::A, Op::AcquirePerm),
        (Channel::C, Op::ReleaseData),
        (Channel::E, Op::GrantAck),
    ];
    let Some(&[op, param, size, lo, hi, flags, seed]) = data.first_chunk::<7>() else {
        return (data.len(), None);
    };
    let (channel, op) = OPS[usize::from(op) % OPS.len()];
    // Mostly sizes the wire can carry, sometimes one it cannot.
    let size = if flags & 1 == 0 { size % 16 } else { size };
    let mut address = u64::from(u16::from_le_bytes([lo, hi]));
    if flags & 2 == 0 && size < 64 {
        address &= !((1u64 << size) - 1);
    }
    let param = param % 8;
    let beats = data_beats(size) * FLIT;
    let masks = mask_flits(size) * FLIT;
    let want = if op.has_mask() {
        beats + masks
    } else if op.has_data() {
        beats
    } else {
        0
    };
    // A short payload now and then, to reach the length checks.
    let want = if flags & 4 != 0 { want / 2 } else { want };
    let mut state = u32::from(seed) | 0x100;
    scratch.clear();
    scratch.extend((0..want).map(|_| {
        // xorshift32: cheap, deterministic, every bit pattern eventually.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as u8
    }));
    let payload = if op.has_mask() {
        let (d, m) = scratch.split_at(want.min(beats));
        Payload::Masked(oxmem_wire::MaskedData::from_memory(d, m))
    } else if op.has_data() {
        Payload::Data(oxmem_wire::Data::from_memory(scratch))
    } else {
        Payload::None
    };
    let msg = Message {
        channel,
        op,
        param,
        size,
        domain: 0,
        denied: false,
        corrupt: flags & 8 != 0,
        source: u32::from(flags >> 4),
        address,
        sink: 0,
        payload,
    };
    (7, Some(msg))
}

fn check_one(exec: &mut Executor<u8>, peer: u8, request: &Message<'_>) {
    let before = exec.arena().as_slice().to_vec();
    let reply = exec.respond(&peer, request).map(|r| {
        assert!(r.check().is_ok(), "reply does not encode: {r:?}");
        let data = match r.payload {
            Payload::Data(d) => Some(d.to_vec()),
            _ => None,
        };
        let summary = (r.channel, r.source, r.size, r.denied, r.corrupt);
        (summary, data)
    });
    let len = if request.size < 64 {
        1u64 << request.size
    } else {
        u64::MAX
    };
    let lane = if request.size < 3 {
        (request.address % 8) as usize
    } else {
        0
    };
    let after = exec.arena().as_slice();

    let changed: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    for &i in &changed {
        let i = i as u64;
        let Some(at) = allowed(peer, request.address, len, true) else {
            panic!("byte {i:#x} changed without a writable grant: {request:?}");
        };
        assert!(
            i >= at && i - at < len,
            "byte {i:#x} changed outside the request {request:?} (at {at:#x} in the arena)"
        );
    }

    let Some(((channel, source, size, denied, corrupt), data)) = reply else {
        assert!(changed.is_empty(), "a dropped request changed memory");
        return;
    };
    assert_eq!(channel, Channel::D);
    assert_eq!(source, request.source);
    assert_eq!(size, request.size);
    if denied {
        assert!(changed.is_empty(), "a denied request changed memory");
        if let Some(data) = &data {
            assert!(corrupt, "denied data reply not corrupt");
            assert!(data.iter().all(|&b| b == 0), "denied reply carries data");
        }
        return;
    }
    let write = match request.op {
        Op::Get => false,
        Op::Intent => request.param == 1,
        _ => true,
    };
    let Some(at) = allowed(peer, request.address, len, write) else {
        panic!("served a request outside the grants: {request:?}");
    };
    if let Some(data) = data {
        let start = at as usize;
        let expected = &before[start..start + len as usize];
        assert_eq!(
            &data[lane..lane + expected.len()],
            expected,
            "wrong bytes returned"
        );
        let inactive = data[..lane].iter().chain(&data[lane + expected.len()..]);
        assert!(inactive.into_iter().all(|&b| b == 0), "inactive lanes leak");
    }
}
