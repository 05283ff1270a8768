//! Get, PutFullData, PutPartialData and Intent do what TileLink says, on every size.

mod common;

use common::{answer, get, open_executor, peer, put, read};
use oxmem_wire::{Channel, IntentParam, Message, Op};

#[test]
fn get_returns_access_ack_data_repeating_source_and_size() {
    let mut exec = open_executor(4096);
    exec.arena_mut()
        .write(0x40, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let reply = answer(&mut exec, &peer(1), &Message::get(0x2ab_cdef, 0x40, 3));
    assert_eq!(reply.channel, Channel::D);
    assert_eq!(reply.op, Op::AccessAckData);
    assert_eq!(reply.source, 0x2ab_cdef);
    assert_eq!(reply.size, 3);
    assert_eq!(reply.param, 0);
    assert!(!reply.denied && !reply.corrupt);
    assert_eq!(reply.data(), &[1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn a_one_byte_get_returns_its_byte_in_its_lane_and_zeros_elsewhere() {
    let mut exec = open_executor(4096);
    let pattern: Vec<u8> = (0x10..0x20).collect();
    exec.arena_mut().write(0x100, &pattern).unwrap();
    let reply = get(&mut exec, &peer(1), 0x103, 0);
    assert_eq!(reply.size, 0);
    assert_eq!(reply.data(), &[0, 0, 0, 0x13, 0, 0, 0, 0]);
}

#[test]
fn sub_beat_gets_use_the_lanes_of_their_address_for_every_size_and_offset() {
    let mut exec = open_executor(4096);
    let pattern: Vec<u8> = (1..=16).collect();
    exec.arena_mut().write(0x200, &pattern).unwrap();
    for size in 0..3u8 {
        let n = 1usize << size;
        for offset in (0..8).step_by(n) {
            let address = 0x208 + offset as u64;
            let reply = get(&mut exec, &peer(1), address, size);
            let mut expected = [0u8; 8];
            expected[offset..offset + n].copy_from_slice(&pattern[8 + offset..8 + offset + n]);
            assert_eq!(reply.data(), &expected, "size {size} at {address:#x}");
        }
    }
}

#[test]
fn put_full_data_writes_every_size_and_answers_access_ack() {
    for size in 0..=12u8 {
        let mut exec = open_executor(8192);
        exec.arena_mut().fill(0, 8192, 0xee).unwrap();
        let n = 1usize << size;
        let address = 4096u64;
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + size as usize) as u8).collect();
        let reply = put(&mut exec, &peer(1), address, &bytes);
        assert_eq!(reply.op, Op::AccessAck);
        assert_eq!((reply.source, reply.size, reply.param), (9, size, 0));
        assert!(!reply.denied && reply.data.is_none());
        let mem = exec.arena().as_slice();
        assert_eq!(&mem[4096..4096 + n], &bytes[..], "size {size}");
        assert!(
            mem[..4096].iter().all(|&b| b == 0xee),
            "before, size {size}"
        );
        assert!(
            mem[4096 + n..].iter().all(|&b| b == 0xee),
            "after, size {size}"
        );
        assert_eq!(exec.counters().bytes_written, n as u64);
    }
}

#[test]
fn a_sub_beat_put_takes_only_its_lanes_from_the_beat() {
    let mut exec = open_executor(4096);
    // The beat carries junk in the lanes the 2-byte put at 0x106 does not use.
    let data = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0x66, 0x77];
    let reply = answer(
        &mut exec,
        &peer(1),
        &Message::put_full_data(1, 0x106, 1, &data),
    );
    assert!(!reply.denied);
    assert_eq!(
        exec.arena().get(0x100, 8).unwrap(),
        &[0, 0, 0, 0, 0, 0, 0x66, 0x77]
    );
}

#[test]
fn big_puts_and_gets_of_4_kib_and_32_kib_round_trip() {
    let mut exec = open_executor(1 << 16);
    for (size, address) in [(12u8, 0x3000u64), (15, 0x8000)] {
        let n = 1usize << size;
        let bytes: Vec<u8> = (0..n).map(|i| (i ^ (i >> 8)) as u8).collect();
        assert!(!put(&mut exec, &peer(1), address, &bytes).denied);
        let reply = get(&mut exec, &peer(1), address, size);
        assert_eq!(reply.data().len(), n);
        assert_eq!(reply.data(), &bytes[..]);
    }
    assert_eq!(exec.counters().bytes_read, 4096 + 32768);
    assert_eq!(exec.counters().requests.get, 2);
    assert_eq!(exec.counters().requests.put_full_data, 2);
}

/// Runs a PutPartialData of `data`/`mask` at `address` over memory filled with 0xee, and
/// checks exactly the enabled active bytes changed.
fn check_partial(size: u8, address: u64, data: &[u8], mask: &[u8]) {
    let mut exec = open_executor(4096);
    exec.arena_mut().fill(0, 4096, 0xee).unwrap();
    let reply = answer(
        &mut exec,
        &peer(1),
        &Message::put_partial_data(3, address, size, data, mask),
    );
    assert_eq!(reply.op, Op::AccessAck);
    assert_eq!((reply.source, reply.size), (3, size));
    assert!(!reply.denied);
    let n = 1usize << size;
    let lane = if size < 3 { (address % 8) as usize } else { 0 };
    let mut expected = vec![0xeeu8; 4096];
    let mut enabled = 0;
    for j in 0..n {
        let i = lane + j;
        if mask[i / 8] >> (i % 8) & 1 == 1 {
            expected[address as usize + j] = data[i];
            enabled += 1;
        }
    }
    assert_eq!(
        exec.arena().as_slice(),
        &expected[..],
        "size {size} at {address:#x}"
    );
    assert_eq!(exec.counters().bytes_written, enabled);
}

#[test]
fn put_partial_data_changes_only_enabled_bytes_on_every_size() {
    for size in 0..=9u8 {
        let beats = if size < 3 { 8 } else { 1 << size };
        let mask_bytes = 8 * 1.max(beats / 64);
        let data: Vec<u8> = (0..beats).map(|i| (i * 3 + 1) as u8).collect();
        let mask: Vec<u8> = (0..mask_bytes)
            .map(|k| (0x5a_u8).rotate_left(k as u32))
            .collect();
        check_partial(size, 0x400, &data, &mask);
    }
}

#[test]
fn put_partial_data_of_64_and_128_bytes_uses_every_mask_flit() {
    // 64 bytes: one mask flit; enable only the last byte.
    let data: Vec<u8> = (0..64).map(|i| i as u8 + 1).collect();
    let mut mask = vec![0u8; 8];
    mask[7] = 0x80;
    check_partial(6, 0x40, &data, &mask);
    // 128 bytes: two mask flits; the second flit's bits must govern the second 64 bytes.
    let data: Vec<u8> = (0..128).map(|i| i as u8 ^ 0x80).collect();
    let mut mask = vec![0u8; 16];
    mask[0] = 0x01; // byte 0
    mask[8] = 0x03; // bytes 64 and 65
    mask[15] = 0xc0; // bytes 126 and 127
    check_partial(7, 0x80, &data, &mask);
    // All disabled: nothing changes; all enabled: everything does.
    check_partial(7, 0x80, &data, &[0; 16]);
    check_partial(7, 0x80, &data, &[0xff; 16]);
}

#[test]
fn a_sub_beat_put_partial_ignores_mask_bits_of_inactive_lanes() {
    // A 2-byte put at 0x404 uses lanes 4 and 5; the mask also (wrongly) enables lanes 0..4 and
    // 6..8, which must not reach memory outside the two addressed bytes.
    let data = [1, 2, 3, 4, 5, 6, 7, 8];
    check_partial(1, 0x404, &data, &[0xff, 0, 0, 0, 0, 0, 0, 0]);
    check_partial(0, 0x407, &data, &[0x80, 0, 0, 0, 0, 0, 0, 0]);
    check_partial(2, 0x404, &data, &[0x3f, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn intent_answers_hint_ack_and_touches_nothing() {
    let mut exec = open_executor(4096);
    for param in [IntentParam::PrefetchRead, IntentParam::PrefetchWrite] {
        let reply = answer(&mut exec, &peer(1), &Message::intent(5, 0x100, 6, param));
        assert_eq!(reply.op, Op::HintAck);
        assert_eq!((reply.source, reply.size, reply.param), (5, 6, 0));
        assert!(!reply.denied && reply.data.is_none());
    }
    assert_eq!(exec.counters().requests.intent, 2);
    assert!(exec.arena().as_slice().iter().all(|&b| b == 0));
}

#[test]
fn a_put_then_sub_beat_gets_read_each_byte_back() {
    let mut exec = open_executor(4096);
    let bytes: Vec<u8> = (0x30..0x40).collect();
    put(&mut exec, &peer(1), 0x800, &bytes);
    for i in 0..16u64 {
        assert_eq!(
            read(&mut exec, &peer(1), 0x800 + i, 0),
            vec![0x30 + i as u8]
        );
    }
    assert_eq!(
        read(&mut exec, &peer(1), 0x80c, 2),
        vec![0x3c, 0x3d, 0x3e, 0x3f]
    );
}
