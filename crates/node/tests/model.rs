//! Random sequences of Put, PutPartial, Get and atomics give the same responses and the same
//! final memory as a plain `Vec<u8>` shadow model.

mod common;

use common::{Peer, answer, executor, peer};
use oxmem_node::{Access, Counters, Executor, Grant, Window};
use oxmem_wire::{ArithmeticParam, LogicalParam, Message, Op};
use proptest::prelude::*;

const CAPACITY: usize = 4096;
/// Peer 1 may write [0, 0xc00); everyone may read [0xc00, 0xe00); [0xe00, 0x1000) is granted
/// to no one.
const WRITABLE_END: u64 = 0xc00;
const READABLE_END: u64 = 0xe00;
const MAX_SIZE: u8 = 8;

#[derive(Debug, Clone)]
enum Step {
    Get {
        peer: u8,
        size: u8,
        slot: u16,
    },
    Put {
        peer: u8,
        size: u8,
        slot: u16,
        data: Vec<u8>,
    },
    PutPartial {
        peer: u8,
        size: u8,
        slot: u16,
        data: Vec<u8>,
        mask: Vec<u8>,
    },
    Atomic {
        peer: u8,
        op: u8,
        size: u8,
        slot: u16,
        operand: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let peer = 1u8..3;
    let size = 0u8..=MAX_SIZE;
    let slot = any::<u16>();
    prop_oneof![
        (peer.clone(), size.clone(), slot).prop_map(|(peer, size, slot)| Step::Get {
            peer,
            size,
            slot
        }),
        (
            peer.clone(),
            size.clone(),
            slot,
            proptest::collection::vec(any::<u8>(), 256)
        )
            .prop_map(|(peer, size, slot, data)| Step::Put {
                peer,
                size,
                slot,
                data
            }),
        (
            peer.clone(),
            size,
            slot,
            proptest::collection::vec(any::<u8>(), 256),
            proptest::collection::vec(any::<u8>(), 32),
        )
            .prop_map(|(peer, size, slot, data, mask)| Step::PutPartial {
                peer,
                size,
                slot,
                data,
                mask
            }),
        (peer, 0u8..9, 0u8..=3, slot, any::<u64>()).prop_map(|(peer, op, size, slot, operand)| {
            Step::Atomic {
                peer,
                op,
                size,
                slot,
                operand,
            }
        }),
    ]
}

fn address(size: u8, slot: u16) -> u64 {
    let slots = (CAPACITY >> size) as u64;
    (u64::from(slot) % slots) << size
}

/// The shadow's grant rule.
fn allowed(peer: u8, address: u64, len: u64, write: bool) -> bool {
    let end = address + len;
    if write {
        peer == 1 && end <= WRITABLE_END
    } else {
        (peer == 1 && end <= WRITABLE_END) || (address >= WRITABLE_END && end <= READABLE_END)
    }
}

fn new_value(op: u8, size: u8, old: u64, operand: u64) -> u64 {
    let bits = 8u32 << size;
    let unused = 64 - bits;
    let sext = |x: u64| ((x << unused) as i64) >> unused;
    let v = match op {
        0 => {
            if sext(operand) < sext(old) {
                operand
            } else {
                old
            }
        }
        1 => {
            if sext(operand) > sext(old) {
                operand
            } else {
                old
            }
        }
        2 => old.min(operand),
        3 => old.max(operand),
        4 => old.wrapping_add(operand),
        5 => old ^ operand,
        6 => old | operand,
        7 => old & operand,
        _ => operand,
    };
    (v << unused) >> unused
}

fn fixture() -> Executor<Peer> {
    let mut exec = executor(CAPACITY as u64);
    let g = exec.grants_mut();
    g.add(Grant::peer(
        peer(1),
        Window {
            base: 0,
            len: WRITABLE_END,
        },
        Access::ReadWrite,
    ))
    .unwrap();
    g.add(Grant::any(
        Window {
            base: WRITABLE_END,
            len: READABLE_END - WRITABLE_END,
        },
        Access::Read,
    ))
    .unwrap();
    exec
}

/// Beat-shaped data for a message: `bytes` in the lanes of `address`, the other lanes filled
/// with junk that must never reach memory.
fn beats(address: u64, size: u8, bytes: &[u8]) -> Vec<u8> {
    let n = 1usize << size;
    if n >= 8 {
        return bytes[..n].to_vec();
    }
    let lane = (address % 8) as usize;
    let mut v = vec![0xa5u8; 8];
    v[lane..lane + n].copy_from_slice(&bytes[..n]);
    v
}

fn run_steps(steps: &[Step]) -> Result<Counters, TestCaseError> {
    let mut exec = fixture();
    let mut shadow = vec![0u8; CAPACITY];
    for step in steps {
        match step {
            Step::Get {
                peer: p,
                size,
                slot,
            } => {
                let (size, address) = (*size, address(*size, *slot));
                let n = 1usize << size;
                let reply = answer(&mut exec, &peer(*p), &Message::get(3, address, size));
                prop_assert_eq!(reply.op, Op::AccessAckData);
                prop_assert_eq!((reply.source, reply.size), (3, size));
                let lane = if n < 8 { (address % 8) as usize } else { 0 };
                let mut expected = vec![0u8; n.max(8)];
                if allowed(*p, address, n as u64, false) {
                    prop_assert!(!reply.denied);
                    let a = address as usize;
                    expected[lane..lane + n].copy_from_slice(&shadow[a..a + n]);
                } else {
                    prop_assert!(reply.denied && reply.corrupt);
                }
                prop_assert_eq!(reply.data(), &expected[..]);
            }
            Step::Put {
                peer: p,
                size,
                slot,
                data,
            } => {
                let (size, address) = (*size, address(*size, *slot));
                let n = 1usize << size;
                let payload = beats(address, size, data);
                let reply = answer(
                    &mut exec,
                    &peer(*p),
                    &Message::put_full_data(4, address, size, &payload),
                );
                prop_assert_eq!(reply.op, Op::AccessAck);
                let ok = allowed(*p, address, n as u64, true);
                prop_assert_eq!(reply.denied, !ok);
                if ok {
                    let a = address as usize;
                    shadow[a..a + n].copy_from_slice(&data[..n]);
                }
            }
            Step::PutPartial {
                peer: p,
                size,
                slot,
                data,
                mask,
            } => {
                let (size, address) = (*size, address(*size, *slot));
                let n = 1usize << size;
                let payload = beats(address, size, data);
                let mask = &mask[..8 * 1usize.max(n / 64)];
                let reply = answer(
                    &mut exec,
                    &peer(*p),
                    &Message::put_partial_data(5, address, size, &payload, mask),
                );
                prop_assert_eq!(reply.op, Op::AccessAck);
                let ok = allowed(*p, address, n as u64, true);
                prop_assert_eq!(reply.denied, !ok);
                if ok {
                    let lane = if n < 8 { (address % 8) as usize } else { 0 };
                    for j in 0..n {
                        let i = lane + j;
                        if mask[i / 8] >> (i % 8) & 1 == 1 {
                            shadow[address as usize + j] = payload[i];
                        }
                    }
                }
            }
            Step::Atomic {
                peer: p,
                op,
                size,
                slot,
                operand,
            } => {
                let (size, address) = (*size, address(*size, *slot));
                let n = 1usize << size;
                let bytes = operand.to_le_bytes();
                let payload = beats(address, size, &bytes);
                let request = if *op < 5 {
                    let param = ArithmeticParam::from_u8(*op).unwrap();
                    Message::arithmetic(6, address, size, param, &payload)
                } else {
                    let param = LogicalParam::from_u8(*op - 5).unwrap();
                    Message::logical(6, address, size, param, &payload)
                };
                let reply = answer(&mut exec, &peer(*p), &request);
                prop_assert_eq!(reply.op, Op::AccessAckData);
                let lane = if n < 8 { (address % 8) as usize } else { 0 };
                let mut expected = [0u8; 8];
                if allowed(*p, address, n as u64, true) {
                    prop_assert!(!reply.denied);
                    let a = address as usize;
                    let mut old = [0u8; 8];
                    old[..n].copy_from_slice(&shadow[a..a + n]);
                    expected[lane..lane + n].copy_from_slice(&old[..n]);
                    let operand = u64::from_le_bytes(bytes) & (u64::MAX >> (64 - (8 << size)));
                    let new = new_value(*op, size, u64::from_le_bytes(old), operand);
                    shadow[a..a + n].copy_from_slice(&new.to_le_bytes()[..n]);
                } else {
                    prop_assert!(reply.denied && reply.corrupt);
                }
                prop_assert_eq!(reply.data(), &expected[..]);
            }
        }
    }
    prop_assert_eq!(exec.arena().as_slice(), &shadow[..]);
    Ok(*exec.counters())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn executor_matches_a_shadow_memory(steps in proptest::collection::vec(step(), 1..64)) {
        run_steps(&steps)?;
    }
}

#[test]
fn the_model_sees_served_and_denied_steps_of_every_kind() {
    // A fixed sequence through each branch of the shadow model, denials included.
    let data: Vec<u8> = (0..=255).collect();
    let steps = vec![
        Step::Put {
            peer: 1,
            size: 6,
            slot: 3,
            data: data.clone(),
        },
        Step::PutPartial {
            peer: 1,
            size: 1,
            slot: 0x61,
            data: data.clone(),
            mask: vec![0xff; 32],
        },
        Step::Atomic {
            peer: 1,
            op: 4,
            size: 2,
            slot: 0x31,
            operand: 0x0101_0101,
        },
        Step::Get {
            peer: 1,
            size: 6,
            slot: 3,
        },
        Step::Get {
            peer: 2,
            size: 6,
            slot: 3,
        },
        Step::Get {
            peer: 2,
            size: 3,
            slot: 0x180,
        },
        Step::Put {
            peer: 2,
            size: 3,
            slot: 0x180,
            data: data.clone(),
        },
        Step::Atomic {
            peer: 1,
            op: 8,
            size: 3,
            slot: 0x1f0,
            operand: 1,
        },
    ];
    let counters = run_steps(&steps).expect("matches the shadow");
    assert_eq!(counters.requests.total(), 8);
    assert_eq!(
        counters.denied.no_grant, 2,
        "peer 2 outside its reach, atomic past the grants"
    );
    assert_eq!(
        counters.denied.read_only, 1,
        "peer 2 writing the read-only window"
    );
    assert_eq!(counters.bytes_written, 64 + 2 + 4);
    assert_eq!(counters.bytes_read, 64 + 8 + 4);
}
