//! The raw Ethernet transport over a veth pair created by each test (needs root and `ip`;
//! skipped with a message otherwise).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oxmem_link::Integrity;
use oxmem_net::ethernet::{EthernetConfig, EthernetTransport};
use oxmem_net::{EthernetAddress, PeerAddr, RecvBatch, Transport, Waker};

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A veth pair that is deleted when dropped, even when the test fails.
struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    /// Creates and brings up a fresh pair, or says why not.
    fn new(mtu: Option<u32>) -> Result<Self, String> {
        if effective_uid() != Some(0) {
            return Err("not root".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 100_000;
        // IFNAMSIZ: at most 15 characters.
        let pair = VethPair {
            a: format!("oxt{id}x{n}a"),
            b: format!("oxt{id}x{n}b"),
        };
        // On any failure below, dropping `pair` deletes whatever was created.
        ip(&[
            "link", "add", &pair.a, "type", "veth", "peer", "name", &pair.b,
        ])?;
        for dev in [&pair.a, &pair.b] {
            if let Some(mtu) = mtu {
                ip(&["link", "set", dev, "mtu", &mtu.to_string()])?;
            }
            ip(&["link", "set", dev, "up"])?;
        }
        // Until the kernel's link watcher has seen the carrier (asynchronously, up to a second
        // after `up`), the devices transmit through a qdisc that drops everything.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dev in [&pair.a, &pair.b] {
            let path = format!("/sys/class/net/{dev}/operstate");
            while std::fs::read_to_string(&path).map_or(true, |s| s.trim() != "up") {
                if Instant::now() > deadline {
                    return Err(format!("{dev} did not come up"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting one end deletes both; ignore errors (never created, already gone).
        let _ = ip(&["link", "del", &self.a]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

macro_rules! veth_or_skip {
    ($mtu:expr) => {
        match VethPair::new($mtu) {
            Ok(pair) => pair,
            Err(why) => {
                eprintln!(
                    "skipped: raw Ethernet test needs root and `ip` to create a veth pair ({why})"
                );
                return;
            }
        }
    };
}

/// Receives for up to `within`, returning (sender, TLoE bytes) of every accepted frame.
fn recv_for(t: &mut EthernetTransport, want: usize, within: Duration) -> Vec<(PeerAddr, Vec<u8>)> {
    let waker = Waker::new().unwrap();
    let mut batch = RecvBatch::new(16, t.mtu() + 14);
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < want {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        t.wait(&waker, Some(deadline - now)).unwrap();
        t.recv(&mut batch).unwrap();
        for i in 0..batch.len() {
            let (peer, bytes) = batch.get(i);
            got.push((peer, bytes.to_vec()));
        }
    }
    got
}

/// (sender, length, first byte) of each frame: enough to tell frames apart in a failure message
/// without printing kilobytes.
fn summary(frames: &[(PeerAddr, Vec<u8>)]) -> Vec<(PeerAddr, usize, Option<u8>)> {
    frames
        .iter()
        .map(|(p, f)| (*p, f.len(), f.first().copied()))
        .collect()
}

fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn send_all(t: &mut EthernetTransport, frames: &[(PeerAddr, Vec<u8>)]) {
    let view: Vec<(PeerAddr, &[u8])> = frames.iter().map(|(p, f)| (*p, f.as_slice())).collect();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while sent < view.len() {
        assert!(Instant::now() < deadline, "send made no progress");
        sent += t.send(&view[sent..]).unwrap();
    }
}

#[test]
fn frames_cross_a_veth_pair_both_ways_with_the_sender_mac() {
    let veth = veth_or_skip!(None);
    let mut a = EthernetTransport::open(&veth.a).unwrap();
    let mut b = EthernetTransport::open(&veth.b).unwrap();
    assert_ne!(a.mac(), b.mac());
    assert_eq!(a.local_addr(), PeerAddr::Ethernet(a.mac()));

    let to_b: Vec<_> = [46, 64, 200, 1500]
        .iter()
        .cycle()
        .take(40)
        .enumerate()
        .map(|(i, &len)| (b.local_addr(), payload(i as u8, len)))
        .collect();
    send_all(&mut a, &to_b);
    let got = recv_for(&mut b, to_b.len(), Duration::from_secs(2));
    let expected: Vec<_> = to_b
        .iter()
        .map(|(_, f)| (a.local_addr(), f.clone()))
        .collect();
    assert_eq!(summary(&got), summary(&expected));
    assert!(got == expected, "payloads differ");

    let to_a = vec![(a.local_addr(), payload(0xee, 100))];
    send_all(&mut b, &to_a);
    let got = recv_for(&mut a, 1, Duration::from_secs(2));
    assert_eq!(
        summary(&got),
        summary(&[(b.local_addr(), payload(0xee, 100))])
    );

    // Neither end sees its own transmissions.
    assert!(recv_for(&mut b, 1, Duration::from_millis(50)).is_empty());
}

#[test]
fn link_params_follow_the_interface_mtu() {
    let veth = veth_or_skip!(Some(9000));
    let mut a = EthernetTransport::open(&veth.a).unwrap();
    let mut b = EthernetTransport::open(&veth.b).unwrap();
    assert_eq!(a.mtu(), 9000);
    let p = a.link_params();
    assert_eq!(p.max_frame, 9000);
    assert_eq!(p.min_frame, 46);
    assert_eq!(p.integrity, Integrity::None);

    // A frame of exactly the MTU passes; one byte more is refused by the kernel.
    let full = payload(1, 9000);
    send_all(&mut a, &[(b.local_addr(), full.clone())]);
    assert_eq!(
        recv_for(&mut b, 1, Duration::from_secs(2)),
        vec![(a.local_addr(), full)]
    );
    let over = payload(2, 9001);
    assert!(a.send(&[(b.local_addr(), &over)]).is_err());
}

#[test]
fn frames_of_another_ethertype_are_skipped() {
    let veth = veth_or_skip!(None);
    let other = EthernetConfig {
        ethertype: 0x88b5, // IEEE local experimental
        ..EthernetConfig::default()
    };
    let mut stranger = EthernetTransport::open_with(&veth.a, other).unwrap();
    let mut a = EthernetTransport::open(&veth.a).unwrap();
    let mut b = EthernetTransport::open(&veth.b).unwrap();
    send_all(&mut stranger, &[(b.local_addr(), payload(3, 64))]);
    send_all(&mut a, &[(b.local_addr(), payload(4, 64))]);
    let got = recv_for(&mut b, 2, Duration::from_millis(300));
    assert_eq!(summary(&got), summary(&[(a.local_addr(), payload(4, 64))]));
}

#[test]
fn frames_for_another_mac_are_skipped_but_broadcast_arrives() {
    let veth = veth_or_skip!(None);
    let mut a = EthernetTransport::open(&veth.a).unwrap();
    let mut b = EthernetTransport::open(&veth.b).unwrap();
    let elsewhere = PeerAddr::Ethernet(EthernetAddress([0x02, 0, 0, 0x0e, 0x1e, 0x5e]));
    let broadcast = PeerAddr::Ethernet(EthernetAddress::BROADCAST);
    send_all(
        &mut a,
        &[
            (elsewhere, payload(5, 64)),
            (broadcast, payload(6, 64)),
            (elsewhere, payload(7, 64)),
        ],
    );
    let got = recv_for(&mut b, 3, Duration::from_millis(300));
    assert_eq!(summary(&got), summary(&[(a.local_addr(), payload(6, 64))]));
}

#[test]
fn qdisc_bypass_still_delivers() {
    let veth = veth_or_skip!(None);
    let bypass = EthernetConfig {
        qdisc_bypass: true,
        ..EthernetConfig::default()
    };
    let mut a = EthernetTransport::open_with(&veth.a, bypass).unwrap();
    let mut b = EthernetTransport::open(&veth.b).unwrap();
    send_all(&mut a, &[(b.local_addr(), payload(8, 300))]);
    assert_eq!(
        recv_for(&mut b, 1, Duration::from_secs(2)),
        vec![(a.local_addr(), payload(8, 300))]
    );
}

#[test]
fn an_unknown_interface_is_named_in_the_error() {
    let err = EthernetTransport::open("oxnosuch0").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("\"oxnosuch0\""), "{err}");
}

const CHILD_ENV: &str = "OXMEM_TEST_UNPRIVILEGED_CHILD";

/// Runs itself again as user `nobody` with no capabilities (setpriv), where opening a raw
/// socket must fail with advice on CAP_NET_RAW.
#[test]
fn without_cap_net_raw_the_error_says_how_to_grant_it() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let err = EthernetTransport::open("lo").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("root or CAP_NET_RAW"), "{msg}");
        assert!(msg.contains("setcap cap_net_raw+ep"), "{msg}");
        println!("child saw: {msg}");
        return;
    }
    if effective_uid() != Some(0) {
        // Already unprivileged: check directly unless this process has CAP_NET_RAW anyway.
        match EthernetTransport::open("lo") {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                assert!(e.to_string().contains("CAP_NET_RAW"), "{e}");
            }
            other => eprintln!("skipped: not root, and opening a raw socket gave {other:?}"),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "without_cap_net_raw_the_error_says_how_to_grant_it",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run setpriv to drop privileges ({e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stdout.contains("running 1 test") {
        // setpriv itself failed (no such user, exec refused...): nothing was tested.
        eprintln!(
            "skipped: could not run the test unprivileged: {}",
            stderr.trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "unprivileged child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("child saw:"),
        "child did not run the check:\n{stdout}"
    );
}
