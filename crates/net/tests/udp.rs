//! The UDP transport over loopback.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use oxmem_link::Integrity;
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_net::{PeerAddr, RecvBatch, Transport, Waker};

fn loopback() -> UdpTransport {
    UdpTransport::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn frame(tag: u8, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| tag ^ (i as u8).wrapping_mul(31) ^ (k as u8))
        .collect()
}

/// Receives until `want` frames arrived or a second passed.
fn recv_all(t: &mut UdpTransport, want: usize) -> Vec<(PeerAddr, Vec<u8>)> {
    let waker = Waker::new().unwrap();
    let mut batch = RecvBatch::new(16, 9000);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < want && Instant::now() < deadline {
        t.wait(&waker, Some(Duration::from_millis(50))).unwrap();
        t.recv(&mut batch).unwrap();
        for i in 0..batch.len() {
            let (peer, bytes) = batch.get(i);
            got.push((peer, bytes.to_vec()));
        }
    }
    got
}

#[test]
fn batches_of_mixed_sizes_reach_several_peers_intact_with_the_sender_address() {
    let mut a = loopback();
    let mut b = loopback();
    let mut c = loopback();
    let sizes = [0usize, 1, 63, 64, 1500, 4096, 8188];
    let mut frames = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(100).enumerate() {
        let to = if i % 3 == 0 { &c } else { &b };
        frames.push((to.local_addr(), frame(0xa5, i, len)));
    }
    let view: Vec<(PeerAddr, &[u8])> = frames.iter().map(|(p, f)| (*p, f.as_slice())).collect();
    let mut sent = 0;
    while sent < view.len() {
        sent += a.send(&view[sent..]).unwrap();
    }

    for rx in [&mut b, &mut c] {
        let addr = rx.local_addr();
        let want: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|(p, _)| *p == addr)
            .map(|(_, f)| f)
            .collect();
        let got = recv_all(rx, want.len());
        assert_eq!(got.len(), want.len(), "frames to {addr}");
        for ((peer, bytes), expected) in got.iter().zip(want) {
            assert_eq!(*peer, a.local_addr());
            assert_eq!(bytes, expected);
        }
    }
}

#[test]
fn recv_on_an_empty_socket_returns_nothing_at_once() {
    let mut t = loopback();
    let mut batch = RecvBatch::new(8, 2048);
    let start = Instant::now();
    assert_eq!(t.recv(&mut batch).unwrap(), 0);
    assert!(batch.is_empty());
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[test]
fn wait_returns_when_woken_from_another_thread() {
    let mut t = loopback();
    let waker = Waker::new().unwrap();
    let remote = waker.clone();
    let start = Instant::now();
    let h = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        remote.wake();
    });
    t.wait(&waker, Some(Duration::from_secs(10))).unwrap();
    let waited = start.elapsed();
    h.join().unwrap();
    assert!(waited >= Duration::from_millis(40), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn wait_returns_after_the_timeout() {
    let mut t = loopback();
    let waker = Waker::new().unwrap();
    let start = Instant::now();
    t.wait(&waker, Some(Duration::from_millis(30))).unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(29), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
fn wait_returns_when_a_datagram_arrives() {
    let mut a = loopback();
    let mut b = loopback();
    let to = b.local_addr();
    let payload = [7u8; 32];
    assert_eq!(a.send(&[(to, &payload)]).unwrap(), 1);
    let waker = Waker::new().unwrap();
    let start = Instant::now();
    b.wait(&waker, Some(Duration::from_secs(10))).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut batch = RecvBatch::new(4, 128);
    assert_eq!(b.recv(&mut batch).unwrap(), 1);
    assert_eq!(batch.get(0), (a.local_addr(), &payload[..]));
}

#[test]
fn link_params_leave_room_for_the_crc_trailer() {
    let t = loopback();
    let p = t.link_params();
    assert_eq!(
        p.max_frame,
        oxmem_net::udp::MAX_DATAGRAM - 4,
        "the default is the largest datagram"
    );
    assert_eq!(p.min_frame, 0);
    assert_eq!(p.integrity, Integrity::Crc32);

    let config = UdpConfig {
        max_datagram: 65_000,
        ..UdpConfig::default()
    };
    let big = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), config).unwrap();
    assert_eq!(big.link_params().max_frame, 65_000 - 4);

    let too_big = UdpConfig {
        max_datagram: 65_001,
        ..UdpConfig::default()
    };
    let err = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), too_big).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn sending_to_an_ethernet_peer_is_refused_and_stops_the_batch_before_it() {
    let mut a = loopback();
    let b = loopback();
    let eth = PeerAddr::Ethernet(oxmem_net::EthernetAddress([2, 0, 0, 0, 0, 1]));
    let x = [1u8; 8];
    assert_eq!(
        a.send(&[(b.local_addr(), &x), (eth, &x), (b.local_addr(), &x)])
            .unwrap(),
        1
    );
    let err = a.send(&[(eth, &x)]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn oversized_datagrams_are_skipped_not_truncated() {
    let mut a = loopback();
    let mut b = loopback();
    let to = b.local_addr();
    let big = vec![1u8; 600];
    let small = [2u8; 100];
    let frames = [
        (to, &big[..]),
        (to, &small[..]),
        (to, &big[..]),
        (to, &small[..]),
    ];
    assert_eq!(a.send(&frames).unwrap(), 4);
    thread::sleep(Duration::from_millis(20));
    let mut batch = RecvBatch::new(8, 512);
    assert_eq!(b.recv(&mut batch).unwrap(), 2);
    for i in 0..2 {
        assert_eq!(batch.get(i).1, &small[..]);
    }
}

#[test]
fn a_dual_stack_socket_talks_to_ipv4_peers() {
    let Ok(mut v6) = UdpTransport::bind("[::]:0".parse().unwrap()) else {
        eprintln!("skipped: no IPv6 on this host");
        return;
    };
    let mut v4 = loopback();
    let PeerAddr::Udp(v6_addr) = v6.local_addr() else {
        unreachable!()
    };
    let to_v6 = PeerAddr::Udp(SocketAddr::new(
        "127.0.0.1".parse().unwrap(),
        v6_addr.port(),
    ));
    let hello = [9u8; 20];
    assert_eq!(v4.send(&[(to_v6, &hello)]).unwrap(), 1);
    let got = {
        let waker = Waker::new().unwrap();
        v6.wait(&waker, Some(Duration::from_secs(1))).unwrap();
        let mut batch = RecvBatch::new(4, 64);
        v6.recv(&mut batch).unwrap();
        (0..batch.len())
            .map(|i| (batch.get(i).0, batch.get(i).1.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        got,
        vec![(v4.local_addr(), hello.to_vec())],
        "the sender shows as plain IPv4"
    );
    // And back, to the IPv4 address.
    assert_eq!(v6.send(&[(v4.local_addr(), &hello)]).unwrap(), 1);
    assert_eq!(recv_all(&mut v4, 1).len(), 1);
}
