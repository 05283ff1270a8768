//! Every access outside the grants is answered denied, counted by reason, and carries no byte
//! of memory; TL-C requests are refused; other channels are dropped.

mod common;

use common::{Peer, Reply, answer, executor, get, peer, put, run};
use oxmem_node::{Access, DenyReason, Executor, Grant, Window};
use oxmem_wire::{ArithmeticParam, Channel, Data, IntentParam, LogicalParam, Message, Op, Payload};

const SECRET: u8 = 0x5e;

/// 64 KiB filled with SECRET; peer 1 may write [0x1000, 0x2000) and read [0x2000, 0x3000);
/// anyone may read and write the open window [0x8000, 0x9000).
fn fixture() -> Executor<Peer> {
    let mut exec = executor(1 << 16);
    exec.arena_mut().fill(0, 1 << 16, SECRET).unwrap();
    let g = exec.grants_mut();
    let w = |base, len| Window { base, len };
    g.add(Grant::peer(peer(1), w(0x1000, 0x1000), Access::ReadWrite))
        .unwrap();
    g.add(Grant::peer(peer(1), w(0x2000, 0x1000), Access::Read))
        .unwrap();
    g.add(Grant::any(w(0x8000, 0x1000), Access::ReadWrite))
        .unwrap();
    exec
}

fn assert_denied_data(reply: &Reply, size: u8) {
    assert_eq!(reply.op, Op::AccessAckData);
    assert!(reply.denied, "not denied: {reply:?}");
    assert!(reply.corrupt, "denied data must be corrupt (TileLink §4.5)");
    assert_eq!(reply.data().len(), 8 * 1usize.max((1 << size) / 8));
    assert!(
        reply.data().iter().all(|&b| b == 0),
        "denied reply leaks memory"
    );
}

fn assert_denied_ack(reply: &Reply) {
    assert_eq!(reply.op, Op::AccessAck);
    assert!(reply.denied && !reply.corrupt && reply.data.is_none());
}

fn unchanged(exec: &Executor<Peer>) -> bool {
    exec.arena().as_slice().iter().all(|&b| b == SECRET)
}

#[test]
fn gets_outside_every_grant_are_denied_without_data() {
    let mut exec = fixture();
    for (address, size) in [(0u64, 3u8), (0, 13), (0x3000, 6), (0x0fff, 0), (0x7000, 12)] {
        let reply = get(&mut exec, &peer(1), address, size);
        assert_denied_data(&reply, size);
    }
    assert_eq!(exec.counters().denied.no_grant, 5);
    assert_eq!(exec.counters().denied.get(DenyReason::NoGrant), 5);
    assert_eq!(exec.counters().bytes_read, 0);
}

#[test]
fn puts_and_atomics_outside_every_grant_are_denied_and_change_nothing() {
    let mut exec = fixture();
    let data = [0u8; 64];
    let reply = put(&mut exec, &peer(1), 0x3000, &data);
    assert_denied_ack(&reply);
    let partial = answer(
        &mut exec,
        &peer(1),
        &Message::put_partial_data(1, 0x0fc0, 6, &data, &[0xff; 8]),
    );
    assert_denied_ack(&partial);
    let atomic = answer(
        &mut exec,
        &peer(1),
        &Message::arithmetic(1, 0x0ff8, 3, ArithmeticParam::Add, &data[..8]),
    );
    assert_denied_data(&atomic, 3);
    assert!(unchanged(&exec));
    assert_eq!(exec.counters().denied.no_grant, 3);
    assert_eq!(exec.counters().bytes_written, 0);
}

#[test]
fn writes_to_a_read_only_grant_are_denied_but_reads_are_served() {
    let mut exec = fixture();
    let data = [1u8; 8];
    assert_denied_ack(&put(&mut exec, &peer(1), 0x2000, &data));
    assert_denied_ack(&answer(
        &mut exec,
        &peer(1),
        &Message::put_partial_data(1, 0x2008, 3, &data, &[0xff; 8]),
    ));
    let swap = answer(
        &mut exec,
        &peer(1),
        &Message::logical(1, 0x2010, 3, LogicalParam::Swap, &data),
    );
    assert_denied_data(&swap, 3);
    let hint = answer(
        &mut exec,
        &peer(1),
        &Message::intent(1, 0x2000, 6, IntentParam::PrefetchWrite),
    );
    assert!(hint.op == Op::HintAck && hint.denied);
    assert!(unchanged(&exec));
    assert_eq!(exec.counters().denied.read_only, 4);

    let read = get(&mut exec, &peer(1), 0x2000, 3);
    assert!(!read.denied);
    assert_eq!(read.data(), &[SECRET; 8]);
    let hint = answer(
        &mut exec,
        &peer(1),
        &Message::intent(1, 0x2000, 6, IntentParam::PrefetchRead),
    );
    assert!(!hint.denied);
}

#[test]
fn accesses_past_the_arena_are_denied_even_under_an_open_window() {
    let mut exec = executor(4096);
    exec.grants_mut()
        .add(Grant::any(Window { base: 0, len: 4096 }, Access::ReadWrite))
        .unwrap();
    assert_denied_data(&get(&mut exec, &peer(3), 4096, 3), 3);
    assert_denied_data(&get(&mut exec, &peer(3), 0, 13), 13);
    assert_denied_data(&get(&mut exec, &peer(3), !7, 3), 3);
    assert_denied_ack(&put(&mut exec, &peer(3), 1 << 40, &[0; 8]));
    assert_eq!(exec.counters().denied.out_of_arena, 4);
}

#[test]
fn unaligned_requests_are_denied_even_when_built_by_hand() {
    let mut exec = fixture();
    // The codec never parses these; a memory node checks for itself anyway.
    let reply = get(&mut exec, &peer(1), 0x1004, 3);
    assert_denied_data(&reply, 3);
    let reply = put(&mut exec, &peer(1), 0x1001, &[0, 0]);
    assert_denied_ack(&reply);
    assert_eq!(exec.counters().denied.unaligned, 2);
    assert!(unchanged(&exec));
}

#[test]
fn malformed_and_corrupt_requests_are_denied_not_executed() {
    let mut exec = fixture();
    // PutFullData whose payload is one beat short.
    let short = [7u8; 56];
    assert_denied_ack(&answer(
        &mut exec,
        &peer(1),
        &Message::put_full_data(1, 0x1000, 6, &short),
    ));
    // An ArithmeticData param TileLink does not define.
    let bad_param = Message {
        param: 7,
        ..Message::arithmetic(1, 0x1000, 3, ArithmeticParam::Add, &[1; 8])
    };
    assert_denied_data(&answer(&mut exec, &peer(1), &bad_param), 3);
    assert_eq!(exec.counters().denied.malformed, 2);
    // Data the sender marked corrupt is not stored as if it were good.
    let corrupt = Message {
        corrupt: true,
        ..Message::put_full_data(1, 0x1000, 3, &[9; 8])
    };
    assert_denied_ack(&answer(&mut exec, &peer(1), &corrupt));
    assert_eq!(exec.counters().denied.corrupt_data, 1);
    assert!(unchanged(&exec));
}

#[test]
fn a_grant_for_one_peer_is_not_usable_by_another() {
    let mut exec = fixture();
    assert!(!get(&mut exec, &peer(1), 0x1000, 6).denied);
    assert_denied_data(&get(&mut exec, &peer(2), 0x1000, 6), 6);
    assert_denied_ack(&put(&mut exec, &peer(2), 0x1000, &[0; 64]));
    assert!(unchanged(&exec));
    assert_eq!(exec.counters().denied.no_grant, 2);
}

#[test]
fn the_open_window_is_usable_by_any_peer() {
    let mut exec = fixture();
    for n in [1u8, 2, 3, 250] {
        let bytes = [n; 16];
        assert!(!put(&mut exec, &peer(n), 0x8000, &bytes).denied);
        let reply = get(&mut exec, &peer(n.wrapping_add(1)), 0x8000, 4);
        assert!(!reply.denied);
        assert_eq!(reply.data(), &bytes);
    }
    // But not one byte past it.
    assert_denied_data(&get(&mut exec, &peer(9), 0x8ff8, 4), 4);
}

#[test]
fn a_revoked_grant_denies_from_then_on() {
    let mut exec = fixture();
    let id = exec
        .grants_mut()
        .add(Grant::peer(
            peer(5),
            Window {
                base: 0x4000,
                len: 64,
            },
            Access::ReadWrite,
        ))
        .unwrap();
    assert!(!get(&mut exec, &peer(5), 0x4000, 6).denied);
    exec.grants_mut().remove(id).expect("present");
    assert_denied_data(&get(&mut exec, &peer(5), 0x4000, 6), 6);
}

#[test]
fn acquires_are_answered_with_a_denied_grant_and_counted_unsupported() {
    let mut exec = fixture();
    let acquire_perm = Message {
        op: Op::AcquirePerm,
        param: 1, // NtoT
        ..Message::get(17, 0x1000, 6)
    };
    let reply = answer(&mut exec, &peer(1), &acquire_perm);
    assert_eq!((reply.channel, reply.op), (Channel::D, Op::Grant));
    assert_eq!(
        (reply.source, reply.size, reply.param, reply.sink),
        (17, 6, 2, 0)
    );
    assert!(reply.denied && !reply.corrupt && reply.data.is_none());

    let acquire_block = Message {
        op: Op::AcquireBlock,
        param: 0, // NtoB
        ..Message::get(18, 0x1000, 6)
    };
    let reply = answer(&mut exec, &peer(1), &acquire_block);
    assert_eq!(reply.op, Op::GrantData);
    assert_eq!(
        (reply.source, reply.size, reply.param, reply.sink),
        (18, 6, 2, 0)
    );
    assert!(reply.denied && reply.corrupt);
    assert_eq!(reply.data(), &[0u8; 64], "GrantData must not carry memory");

    let c = exec.counters();
    assert_eq!(c.unsupported, 2);
    assert_eq!((c.requests.acquire_perm, c.requests.acquire_block), (1, 1));
    assert_eq!(c.denied.total(), 0);
}

#[test]
fn messages_on_channels_b_to_e_are_dropped_and_counted() {
    let mut exec = fixture();
    let data = [0u8; 64];
    let on_b = Message {
        channel: Channel::B,
        ..Message::get(1, 0x1000, 6)
    };
    let release_data = Message {
        channel: Channel::C,
        op: Op::ReleaseData,
        payload: Payload::Data(Data::from_memory(&data)),
        ..Message::get(1, 0x1000, 6)
    };
    let on_d = Message::access_ack_data(1, 3, false, &data[..8]);
    let grant_ack = Message::grant_ack(0);
    for msg in [on_b, release_data, on_d, grant_ack] {
        assert!(run(&mut exec, &peer(1), &msg).is_none(), "{msg:?} answered");
    }
    assert_eq!(exec.counters().dropped, 4);
    assert_eq!(exec.counters().requests.total(), 0);
    assert!(unchanged(&exec));
}

#[test]
fn hand_built_messages_no_reply_can_answer_are_dropped() {
    let mut exec = fixture();
    let too_big = Message {
        size: 16,
        ..Message::get(1, 0, 0)
    };
    let wide_source = Message::get(1 << 26, 0x1000, 3);
    let wrong_op = Message {
        op: Op::AccessAck,
        ..Message::get(1, 0x1000, 3)
    };
    for msg in [too_big, wide_source, wrong_op] {
        assert!(run(&mut exec, &peer(1), &msg).is_none(), "{msg:?} answered");
    }
    assert_eq!(exec.counters().dropped, 3);
}

#[test]
fn denied_gets_of_every_size_are_all_zero_and_sized_like_the_request() {
    let mut exec = fixture();
    for size in 0..=15u8 {
        let reply = get(&mut exec, &peer(2), 0, size);
        assert_eq!(reply.size, size);
        assert_denied_data(&reply, size);
    }
}
