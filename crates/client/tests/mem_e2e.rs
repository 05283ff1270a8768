//! Client against a real node executor over the in-process transport: reads, writes and
//! atomics checked against a shadow copy of the node's memory.

use std::time::Duration;

use oxmem_client::{AtomicOp, Completed, Endpoint, EndpointOptions, Error};
use oxmem_net::engine::{Engine, EngineConfig, Handler, Outbox};
use oxmem_net::mem::MemNetwork;
use oxmem_net::{PeerAddr, Transport};
use oxmem_node::{Access, Arena, Executor, Grant, Window};
use oxmem_wire::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Node(Executor<PeerAddr>);

impl Handler for Node {
    fn on_message(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
        self.0.execute(&peer, msg, &mut |reply| {
            let _ = out.send(peer, &reply);
        });
    }
}

const CAPACITY: u64 = 1 << 20;

fn start(net: &MemNetwork, max_frame: usize, window: Window) -> (Engine, PeerAddr) {
    let transport = net.endpoint(7447, max_frame);
    let addr = transport.local_addr();
    let mut exec = Executor::new(Arena::new(CAPACITY).unwrap());
    exec.grants_mut()
        .add(Grant::any(window, Access::ReadWrite))
        .unwrap();
    let config = EngineConfig {
        accept: true,
        ..EngineConfig::default()
    };
    (Engine::spawn(transport, Node(exec), config).unwrap(), addr)
}

fn client(net: &MemNetwork, port: u16, node: PeerAddr, options: EndpointOptions) -> Endpoint {
    Endpoint::with_transport(net.endpoint(port, 8192), node, options).unwrap()
}

#[test]
fn random_reads_writes_and_atomics_match_a_shadow_copy() {
    let net = MemNetwork::new();
    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0,
            len: CAPACITY,
        },
    );
    let ep = client(&net, 1000, addr, EndpointOptions::default());
    let mut shadow = vec![0u8; CAPACITY as usize];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for round in 0..400 {
        let address = rng.random_range(0..CAPACITY - 70_000);
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(1..16),
            1 => rng.random_range(1..300),
            2 => rng.random_range(1..9000),
            _ => rng.random_range(1..70_000),
        };
        match rng.random_range(0..3) {
            0 => {
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                ep.write(address, &data).unwrap();
                shadow[address as usize..address as usize + len].copy_from_slice(&data);
            }
            1 => {
                let mut buf = vec![0u8; len];
                ep.read(address, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    shadow[address as usize..address as usize + len],
                    "round {round}"
                );
            }
            _ => {
                let width = [1u8, 2, 4, 8][rng.random_range(0..4)];
                let a = address & !(u64::from(width) - 1);
                let operand: u64 = rng.random();
                let op = [AtomicOp::Add, AtomicOp::Xor, AtomicOp::Swap, AtomicOp::MaxU]
                    [rng.random_range(0..4)];
                let old = ep.atomic(a, op, width, operand).unwrap();
                let w = usize::from(width);
                let mut cur = [0u8; 8];
                cur[..w].copy_from_slice(&shadow[a as usize..a as usize + w]);
                let cur = u64::from_le_bytes(cur);
                assert_eq!(old, cur, "round {round}: atomic returns the old value");
                let mask = if w == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * w)) - 1
                };
                let (x, y) = (cur & mask, operand & mask);
                let new = match op {
                    AtomicOp::Add => x.wrapping_add(y),
                    AtomicOp::Xor => x ^ y,
                    AtomicOp::Swap => y,
                    _ => x.max(y),
                } & mask;
                shadow[a as usize..a as usize + w].copy_from_slice(&new.to_le_bytes()[..w]);
            }
        }
    }
    let mut all = vec![0u8; 1 << 16];
    ep.read(0, &mut all).unwrap();
    assert_eq!(all, shadow[..1 << 16]);
}

#[test]
fn accesses_outside_the_window_are_denied_with_the_address() {
    let net = MemNetwork::new();
    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0x1000,
            len: 0x1000,
        },
    );
    let ep = client(&net, 1001, addr, EndpointOptions::default());
    ep.write(0x1000, &[7; 64]).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        ep.read(0x800, &mut buf),
        Err(Error::Denied { address: 0x800 })
    );
    assert_eq!(buf, [0; 64], "a failed read leaves the buffer untouched");
    // A read straddling the window's end: the part beyond it is denied.
    let mut big = vec![0u8; 256];
    assert_eq!(
        ep.read(0x1f80, &mut big),
        Err(Error::Denied { address: 0x2000 })
    );
    assert_eq!(
        ep.write(0x3000, &[1; 8]),
        Err(Error::Denied { address: 0x3000 })
    );
    assert!(matches!(ep.fetch_add(0x4000, 1), Err(Error::Denied { .. })));
    ep.read(0x1000, &mut buf).unwrap();
    assert_eq!(buf, [7; 64]);
}

#[test]
fn small_frames_and_no_partial_writes_still_move_odd_transfers() {
    let net = MemNetwork::new();
    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0,
            len: CAPACITY,
        },
    );
    let options = EndpointOptions {
        max_frame: Some(528),
        partial_writes: false,
        ..EndpointOptions::default()
    };
    let ep = client(&net, 1002, addr, options);
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    ep.write(0x333, &data).unwrap();
    let mut back = vec![0u8; 5000];
    ep.read(0x333, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(
        ep.stats()
            .messages_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            > 20
    );
}

#[test]
fn batches_complete_together_in_order() {
    let net = MemNetwork::new();
    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0,
            len: CAPACITY,
        },
    );
    let ep = client(&net, 1003, addr, EndpointOptions::default());
    let mut b = ep.batch();
    for i in 0..100u64 {
        b.write(i * 4096, &[i as u8; 4096]);
    }
    assert!(b.run().into_iter().all(|r| r == Ok(Completed::Write)));
    let mut b = ep.batch();
    for i in 0..100u64 {
        b.read(i * 4096 + 1, 10);
    }
    b.atomic(0, AtomicOp::Add, 8, 5);
    let results = b.run();
    for (i, r) in results.iter().take(100).enumerate() {
        assert_eq!(r, &Ok(Completed::Read(vec![i as u8; 10])));
    }
    assert_eq!(results[100], Ok(Completed::Atomic(0)));
}

#[test]
fn many_threads_share_one_endpoint() {
    let net = MemNetwork::new();
    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0,
            len: CAPACITY,
        },
    );
    let ep = client(&net, 1004, addr, EndpointOptions::default());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let ep = &ep;
            s.spawn(move || {
                for i in 0..200u64 {
                    ep.fetch_add(8 * t, 1).unwrap();
                    let a = 0x10000 * (t + 1) + i * 64;
                    ep.write(a, &[t as u8 ^ i as u8; 64]).unwrap();
                    let mut buf = [0u8; 64];
                    ep.read(a, &mut buf).unwrap();
                    assert_eq!(buf, [t as u8 ^ i as u8; 64]);
                }
            });
        }
    });
    for t in 0..4u64 {
        assert_eq!(ep.fetch_add(8 * t, 0).unwrap(), 200);
    }
}

#[test]
fn requests_to_a_silent_node_time_out_and_invalid_requests_are_refused() {
    let net = MemNetwork::new();
    // Nothing listens on port 9: the connection never opens.
    let silent = net.endpoint(9, 8192).local_addr();
    let options = EndpointOptions {
        connect_timeout: Duration::from_millis(200),
        ..EndpointOptions::default()
    };
    let err = Endpoint::with_transport(net.endpoint(1005, 8192), silent, options).unwrap_err();
    assert_eq!(err, Error::Timeout);

    let (_node, addr) = start(
        &net,
        8192,
        Window {
            base: 0,
            len: CAPACITY,
        },
    );
    let ep = client(&net, 1006, addr, EndpointOptions::default());
    assert!(matches!(ep.read(0, &mut []), Err(Error::InvalidRequest(_))));
    assert!(matches!(
        ep.atomic(3, AtomicOp::Add, 4, 1),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        ep.atomic(0, AtomicOp::Add, 3, 1),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        ep.write(u64::MAX - 2, &[0; 8]),
        Err(Error::InvalidRequest(_))
    ));
}
