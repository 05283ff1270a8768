//! Raw Ethernet and UDP end to end between two network namespaces joined by a veth pair:
//! `oxmem node` in one namespace listening on both transports, `oxmem write` and `oxmem read`
//! in the other. Needs root and `ip` (iproute2); prints "skipped: …" and passes otherwise.
//! Namespaces and interfaces carry the test's pid, and are deleted even when the test fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Running, hex, oxmem, pattern, run, run_ok, unhex};

const LIMIT: Duration = Duration::from_secs(20);

/// Two namespaces joined by a veth pair; deleted on drop (deleting a namespace deletes the
/// veth end inside it, and with it the pair).
struct Namespaces {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `args` inside namespace `ns` and returns its stdout.
fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| format!("ip netns exec: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "in {ns}: {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Creates both namespaces and the pair, addresses them 10.203.0.1 and .2, and waits until
    /// both ends are up.
    fn create(tag: &str) -> Result<Namespaces, String> {
        let pid = std::process::id();
        let ns = Namespaces {
            a: format!("oxmem-{tag}-a-{pid}"),
            b: format!("oxmem-{tag}-b-{pid}"),
            // Interface names have at most 15 characters.
            veth_a: format!("ox{tag}a{}", pid % 1_000_000),
            veth_b: format!("ox{tag}b{}", pid % 1_000_000),
        };
        // From here on, dropping `ns` cleans up whatever was made.
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&[
            "link", "add", &ns.veth_a, "netns", &ns.a, "type", "veth", "peer", "name", &ns.veth_b,
            "netns", &ns.b,
        ])?;
        for (space, dev, addr) in [
            (&ns.a, &ns.veth_a, "10.203.0.1/24"),
            (&ns.b, &ns.veth_b, "10.203.0.2/24"),
        ] {
            ip(&["-n", space, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", space, "link", "set", "lo", "up"])?;
            ip(&["-n", space, "link", "set", dev, "up"])?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (space, dev) in [(&ns.a, &ns.veth_a), (&ns.b, &ns.veth_b)] {
            let path = format!("/sys/class/net/{dev}/operstate");
            loop {
                let state = in_ns(space, &["cat", &path])?;
                if state == "up" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{dev} in {space} stays {state}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(ns)
    }

    fn mac(&self, space: &str, dev: &str) -> String {
        in_ns(space, &["cat", &format!("/sys/class/net/{dev}/address")]).unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    // The effective user from `id -u`, to need no libc binding.
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root to create network namespaces".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) is not installed".into()),
    }
}

fn oxmem_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, oxmem()]).args(args);
    c
}

fn write(ns: &str, target: &str, addr: u64, data: &[u8]) {
    let addr = addr.to_string();
    let data = hex(data);
    let out = run_ok(
        oxmem_in(
            ns,
            &[
                "write",
                "--target",
                target,
                "--timeout",
                "5s",
                "--addr",
                &addr,
                "--hex",
                &data,
            ],
        ),
        LIMIT,
    );
    assert_eq!(out.trim(), "ok");
}

fn read(ns: &str, target: &str, addr: u64, len: usize) -> Vec<u8> {
    let (addr, len_s) = (addr.to_string(), len.to_string());
    let out = run_ok(
        oxmem_in(
            ns,
            &[
                "read",
                "--target",
                target,
                "--timeout",
                "5s",
                "--addr",
                &addr,
                "--len",
                &len_s,
            ],
        ),
        LIMIT,
    );
    let bytes = unhex(out.trim());
    assert_eq!(bytes.len(), len);
    bytes
}

#[test]
fn raw_ethernet_and_udp_between_two_namespaces() {
    if let Some(why) = cannot_run() {
        println!("skipped: {why}");
        return;
    }
    let ns = match Namespaces::create("e") {
        Ok(ns) => ns,
        Err(e) => {
            // Root without the right to make namespaces (a restricted container).
            println!("skipped: cannot create namespaces and a veth pair: {e}");
            return;
        }
    };
    let listen_eth = format!("eth://{}", ns.veth_a);
    let mut node = Running::spawn(oxmem_in(
        &ns.a,
        &[
            "node",
            "--listen",
            &listen_eth,
            "--listen",
            "udp://10.203.0.1:7447",
            "--capacity",
            "16MiB",
            "--open-window",
            "0:16MiB",
            "--run-for",
            "30s",
        ],
    ));
    let lines = node.wait_for("listening", 2, Duration::from_secs(10));
    let mac = ns.mac(&ns.a, &ns.veth_a);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("raw Ethernet, MAC {mac}"))),
        "the node names its MAC {mac}: {lines:?}"
    );
    let eth = format!("eth://{}/{mac}", ns.veth_b);
    let udp = "udp://10.203.0.1:7447";

    // Raw Ethernet: aligned, unaligned and odd, and larger than one 1500-byte frame.
    write(&ns.b, &eth, 0, &[0xca, 0xfe, 0xf0, 0x0d]);
    assert_eq!(read(&ns.b, &eth, 0, 4), [0xca, 0xfe, 0xf0, 0x0d]);
    let odd = pattern(333, 1);
    write(&ns.b, &eth, 0x2001, &odd);
    let around = read(&ns.b, &eth, 0x2000, 335);
    assert_eq!((around[0], around[334]), (0, 0));
    assert_eq!(around[1..334], odd[..]);
    let big = pattern(9_000, 2);
    write(&ns.b, &eth, 0x10_0005, &big);
    assert_eq!(read(&ns.b, &eth, 0x10_0005, big.len()), big);

    // UDP across the namespaces, to the same node and the same memory.
    assert_eq!(read(&ns.b, udp, 0x2001, 333), odd);
    let more = pattern(5_000, 3);
    write(&ns.b, udp, 0x30_0003, &more);
    assert_eq!(read(&ns.b, udp, 0x30_0003, more.len()), more);
    assert_eq!(read(&ns.b, &eth, 0x30_0003, more.len()), more);

    // Outside the window, over raw Ethernet: refused.
    let out = run(
        oxmem_in(
            &ns.b,
            &[
                "read",
                "--target",
                &eth,
                "--timeout",
                "5s",
                "--addr",
                "16MiB",
                "--len",
                "8",
            ],
        ),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("denied"), "{:?}", out.stderr);

    // Stop the node (the guard would, too) before the namespaces go.
    let (_, lines, _) = node.finish(Duration::ZERO);
    println!("node output: {lines:?}");
    drop(ns);
}
