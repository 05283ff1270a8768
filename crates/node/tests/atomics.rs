//! ArithmeticData and LogicalData on 1-, 2-, 4- and 8-byte operands: little-endian, in the
//! lanes of their address, answering the old value; wider atomics are denied.

mod common;

use common::{Peer, answer, open_executor, peer};
use oxmem_node::Executor;
use oxmem_wire::{ArithmeticParam, LogicalParam, Message, Op};

#[derive(Debug, Clone, Copy)]
enum Atomic {
    A(ArithmeticParam),
    L(LogicalParam),
}

const ALL: [Atomic; 9] = [
    Atomic::A(ArithmeticParam::Min),
    Atomic::A(ArithmeticParam::Max),
    Atomic::A(ArithmeticParam::MinU),
    Atomic::A(ArithmeticParam::MaxU),
    Atomic::A(ArithmeticParam::Add),
    Atomic::L(LogicalParam::Xor),
    Atomic::L(LogicalParam::Or),
    Atomic::L(LogicalParam::And),
    Atomic::L(LogicalParam::Swap),
];

/// Runs `atomic` with `operand` (n = 2^size bytes) at `address` whose memory holds `old`;
/// checks the reply carries `old` in its lanes and zeros elsewhere, and returns the new memory
/// value. Bytes around the operand must not change.
fn apply(atomic: Atomic, size: u8, address: u64, old: u64, operand: u64) -> u64 {
    let n = 1usize << size;
    let lane = (address % 8) as usize;
    let mut exec: Executor<Peer> = open_executor(4096);
    exec.arena_mut().fill(0, 4096, 0xcc).unwrap();
    exec.arena_mut()
        .write(address, &old.to_le_bytes()[..n])
        .unwrap();
    let mut beat = [0x99u8; 8]; // junk in the inactive lanes must be ignored
    beat[lane..lane + n].copy_from_slice(&operand.to_le_bytes()[..n]);
    let request = match atomic {
        Atomic::A(p) => Message::arithmetic(42, address, size, p, &beat),
        Atomic::L(p) => Message::logical(42, address, size, p, &beat),
    };
    let reply = answer(&mut exec, &peer(1), &request);
    assert_eq!(reply.op, Op::AccessAckData);
    assert_eq!((reply.source, reply.size, reply.param), (42, size, 0));
    assert!(!reply.denied && !reply.corrupt);
    let mut expected = [0u8; 8];
    expected[lane..lane + n].copy_from_slice(&old.to_le_bytes()[..n]);
    assert_eq!(
        reply.data(),
        &expected,
        "{atomic:?} size {size}: old value in its lanes"
    );

    let mem = exec.arena().as_slice();
    let at = address as usize;
    assert!(mem[..at].iter().all(|&b| b == 0xcc), "bytes below changed");
    assert!(
        mem[at + n..].iter().all(|&b| b == 0xcc),
        "bytes above changed"
    );
    let mut new = [0u8; 8];
    new[..n].copy_from_slice(&mem[at..at + n]);
    assert_eq!(exec.counters().bytes_read, n as u64);
    assert_eq!(exec.counters().bytes_written, n as u64);
    u64::from_le_bytes(new)
}

fn mask(size: u8) -> u64 {
    if size == 3 {
        u64::MAX
    } else {
        (1u64 << (8 << size)) - 1
    }
}

fn sext(x: u64, size: u8) -> i64 {
    let unused = 64 - (8 << size);
    ((x << unused) as i64) >> unused
}

/// What TileLink §6.2 says the new value is.
fn model(atomic: Atomic, size: u8, old: u64, operand: u64) -> u64 {
    let new = match atomic {
        Atomic::A(ArithmeticParam::Min) => {
            if sext(operand, size) < sext(old, size) {
                operand
            } else {
                old
            }
        }
        Atomic::A(ArithmeticParam::Max) => {
            if sext(operand, size) > sext(old, size) {
                operand
            } else {
                old
            }
        }
        Atomic::A(ArithmeticParam::MinU) => old.min(operand),
        Atomic::A(ArithmeticParam::MaxU) => old.max(operand),
        Atomic::A(ArithmeticParam::Add) => old.wrapping_add(operand),
        Atomic::L(LogicalParam::Xor) => old ^ operand,
        Atomic::L(LogicalParam::Or) => old | operand,
        Atomic::L(LogicalParam::And) => old & operand,
        Atomic::L(LogicalParam::Swap) => operand,
    };
    new & mask(size)
}

#[test]
fn signed_min_and_max_treat_the_top_bit_as_sign_on_one_byte() {
    // 0x80 is -128 signed, 128 unsigned; 0x7f is 127 both ways.
    let min = Atomic::A(ArithmeticParam::Min);
    let max = Atomic::A(ArithmeticParam::Max);
    assert_eq!(apply(min, 0, 0x101, 0x7f, 0x80), 0x80);
    assert_eq!(apply(min, 0, 0x101, 0x80, 0x7f), 0x80);
    assert_eq!(apply(max, 0, 0x101, 0x80, 0x7f), 0x7f);
    assert_eq!(apply(max, 0, 0x101, 0x7f, 0x80), 0x7f);
    // -1 against 0.
    assert_eq!(apply(min, 0, 0x107, 0x00, 0xff), 0xff);
    assert_eq!(apply(max, 0, 0x107, 0x00, 0xff), 0x00);
}

#[test]
fn unsigned_min_and_max_treat_the_top_bit_as_magnitude_on_one_byte() {
    let minu = Atomic::A(ArithmeticParam::MinU);
    let maxu = Atomic::A(ArithmeticParam::MaxU);
    assert_eq!(apply(minu, 0, 0x102, 0x7f, 0x80), 0x7f);
    assert_eq!(apply(minu, 0, 0x102, 0x80, 0x7f), 0x7f);
    assert_eq!(apply(maxu, 0, 0x102, 0x80, 0x7f), 0x80);
    assert_eq!(apply(maxu, 0, 0x102, 0x00, 0xff), 0xff);
}

#[test]
fn min_and_max_edges_on_two_four_and_eight_bytes() {
    let cases: [(u8, u64, u64); 3] = [
        (1, 0x8000, 0x7fff),
        (2, 0x8000_0000, 0x7fff_ffff),
        (3, 0x8000_0000_0000_0000, 0x7fff_ffff_ffff_ffff),
    ];
    for (size, most_negative, most_positive) in cases {
        // Lane 4 when the operand is narrower than the beat.
        let at = if size < 3 { 0x204 } else { 0x208 };
        let (lo, hi) = (most_negative, most_positive);
        assert_eq!(apply(Atomic::A(ArithmeticParam::Min), size, at, hi, lo), lo);
        assert_eq!(apply(Atomic::A(ArithmeticParam::Max), size, at, lo, hi), hi);
        assert_eq!(
            apply(Atomic::A(ArithmeticParam::MinU), size, at, lo, hi),
            hi
        );
        assert_eq!(
            apply(Atomic::A(ArithmeticParam::MaxU), size, at, hi, lo),
            lo
        );
        let all = mask(size);
        assert_eq!(
            apply(Atomic::A(ArithmeticParam::Min), size, at, 0, all),
            all
        );
        assert_eq!(
            apply(Atomic::A(ArithmeticParam::MaxU), size, at, 0, all),
            all
        );
    }
}

#[test]
fn add_wraps_within_the_operand_size_and_does_not_carry_into_neighbours() {
    let add = Atomic::A(ArithmeticParam::Add);
    assert_eq!(apply(add, 0, 0x105, 0xff, 0x01), 0x00);
    assert_eq!(apply(add, 1, 0x102, 0xffff, 0x0002), 0x0001);
    assert_eq!(apply(add, 2, 0x104, 0xffff_fff0, 0x20), 0x10);
    assert_eq!(apply(add, 3, 0x108, u64::MAX, 2), 1);
    assert_eq!(apply(add, 2, 0x100, 0x0102_0304, 0x1010_1010), 0x1112_1314);
}

#[test]
fn logical_operations_and_swap_on_every_size() {
    for size in 0..=3u8 {
        let at = 0x300 + (1u64 << size) * (size as u64 % 2);
        let (old, operand) = (
            0x0123_4567_89ab_cdef & mask(size),
            0xf0f0_f0f0_ff00_ff00 & mask(size),
        );
        assert_eq!(
            apply(Atomic::L(LogicalParam::Xor), size, at, old, operand),
            old ^ operand
        );
        assert_eq!(
            apply(Atomic::L(LogicalParam::Or), size, at, old, operand),
            old | operand
        );
        assert_eq!(
            apply(Atomic::L(LogicalParam::And), size, at, old, operand),
            old & operand
        );
        assert_eq!(
            apply(Atomic::L(LogicalParam::Swap), size, at, old, operand),
            operand
        );
    }
}

#[test]
fn every_atomic_on_every_size_and_lane_matches_the_model() {
    let values: [u64; 6] = [
        0,
        1,
        0x7f7f_7f7f_7f7f_7f7f,
        0x8080_8080_8080_8080,
        u64::MAX,
        0x1234_5678_9abc_def0,
    ];
    for atomic in ALL {
        for size in 0..=3u8 {
            let n = 1u64 << size;
            for lane in (0..8).step_by(n as usize) {
                for &old in &values {
                    for &operand in &values {
                        let (old, operand) = (old & mask(size), operand & mask(size));
                        let got = apply(atomic, size, 0x500 + lane, old, operand);
                        assert_eq!(
                            got,
                            model(atomic, size, old, operand),
                            "{atomic:?} size {size} lane {lane} old {old:#x} operand {operand:#x}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn atomics_wider_than_the_bus_are_denied_and_change_nothing() {
    let mut exec = open_executor(4096);
    exec.arena_mut().fill(0, 4096, 0x11).unwrap();
    for size in [4u8, 6] {
        let data = vec![0xffu8; 1 << size];
        for request in [
            Message::arithmetic(1, 0x100, size, ArithmeticParam::Add, &data),
            Message::logical(1, 0x100, size, LogicalParam::Swap, &data),
        ] {
            let reply = answer(&mut exec, &peer(1), &request);
            assert_eq!(reply.op, Op::AccessAckData);
            assert!(reply.denied && reply.corrupt);
            assert_eq!(reply.data().len(), 1 << size);
            assert!(reply.data().iter().all(|&b| b == 0));
        }
    }
    assert!(exec.arena().as_slice().iter().all(|&b| b == 0x11));
    assert_eq!(exec.counters().denied.atomic_too_large, 4);
    assert_eq!(exec.counters().requests.arithmetic_data, 2);
    assert_eq!(exec.counters().requests.logical_data, 2);
}
