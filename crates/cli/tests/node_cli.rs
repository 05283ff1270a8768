//! The real `oxmem` binary end to end over UDP on loopback: `oxmem node` as a child process,
//! `oxmem write` and `oxmem read` against it, a denied read, and a read from a port where
//! nothing listens. Every test picks its own free port, so they run in parallel.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::{Running, hex, oxmem, pattern, run, run_ok, unhex};

const LIMIT: Duration = Duration::from_secs(20);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `oxmem node` on a free loopback port with `extra` arguments; returns it once it
/// says it listens, and its target URL.
fn start_node(extra: &[&str]) -> (Running, String) {
    // The port may be taken between picking and binding: try a few.
    for _ in 0..5 {
        let port = free_port();
        let listen = format!("udp://127.0.0.1:{port}");
        let mut cmd = Command::new(oxmem());
        cmd.args(["node", "--listen", &listen, "--capacity", "16MiB"])
            .args(extra);
        let mut node = Running::spawn(cmd);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            node.wait_for("listening", 1, Duration::from_secs(10))
        }));
        match started {
            Ok(lines) => {
                assert_eq!(
                    lines[0],
                    format!("oxmem node: listening on {listen}"),
                    "the node says where it listens"
                );
                return (node, listen);
            }
            Err(_) => {
                let (status, out, err) = node.finish(Duration::from_secs(1));
                eprintln!("node on {listen} did not start ({status:?}): {out:?} {err}");
            }
        }
    }
    panic!("no node could be started");
}

fn client(cmd: &str, target: &str, args: &[&str]) -> Command {
    let mut c = Command::new(oxmem());
    c.args([cmd, "--target", target, "--timeout", "5s"])
        .args(args);
    c
}

fn write(target: &str, addr: u64, data: &[u8]) {
    let out = run_ok(
        client(
            "write",
            target,
            &["--addr", &format!("{addr:#x}"), "--hex", &hex(data)],
        ),
        LIMIT,
    );
    assert_eq!(out.trim(), "ok");
}

fn read(target: &str, addr: u64, len: usize) -> Vec<u8> {
    let out = run_ok(
        client(
            "read",
            target,
            &["--addr", &addr.to_string(), "--len", &len.to_string()],
        ),
        LIMIT,
    );
    let bytes = unhex(out.trim());
    assert_eq!(bytes.len(), len, "read prints exactly the bytes asked for");
    bytes
}

#[test]
fn write_and_read_round_trip_through_the_binary() {
    let (node, target) = start_node(&["--open-window", "0:16MiB", "--run-for", "20s"]);

    // Aligned, then unaligned with an odd length, then one spanning many frames.
    write(&target, 0, &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(read(&target, 0, 4), [0xde, 0xad, 0xbe, 0xef]);

    let odd = pattern(37, 5);
    write(&target, 0x1003, &odd);
    let around = read(&target, 0x1002, 39);
    assert_eq!(around[0], 0, "the byte before is untouched");
    assert_eq!(around[1..38], odd[..]);
    assert_eq!(around[38], 0, "the byte after is untouched");

    let big = pattern(20_001, 9);
    write(&target, 0x12_3457, &big);
    assert_eq!(read(&target, 0x12_3457, big.len()), big);
    // Near the end of the window.
    write(&target, (16 << 20) - 3, &[1, 2, 3]);
    assert_eq!(read(&target, (16 << 20) - 5, 5), [0, 0, 1, 2, 3]);

    // A separate process reads what an earlier one wrote: the data lives in the node.
    assert_eq!(read(&target, 0x1003, 37), odd);
    drop(node);
}

#[test]
fn denied_read_outside_the_window_fails_with_denied() {
    let (node, target) = start_node(&["--open-window", "0:16MiB", "--run-for", "20s"]);
    for (addr, len) in [(16u64 << 20, 8usize), ((16 << 20) - 4, 8), (1 << 40, 1)] {
        let out = run(
            client(
                "read",
                &target,
                &["--addr", &addr.to_string(), "--len", &len.to_string()],
            ),
            LIMIT,
        );
        assert!(
            !out.status.success(),
            "read at {addr:#x} succeeded: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("denied"),
            "stderr says denied: {:?}",
            out.stderr
        );
        assert!(
            out.stdout.trim().is_empty(),
            "no data printed: {:?}",
            out.stdout
        );
    }
    let out = run(
        client("write", &target, &["--addr", "16MiB", "--hex", "00ff"]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("denied"), "{:?}", out.stderr);
    assert!(!out.stdout.contains("ok"));
    drop(node);
}

#[test]
fn a_node_with_only_a_small_window_denies_the_rest() {
    let (node, target) = start_node(&["--open-window", "4KiB:4KiB", "--run-for", "20s"]);
    write(&target, 4096, &[7; 16]);
    assert_eq!(read(&target, 4096, 16), [7; 16]);
    let out = run(
        client("read", &target, &["--addr", "0", "--len", "16"]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("denied at 0x0"), "{:?}", out.stderr);
    let out = run(
        client("read", &target, &["--addr", "8180", "--len", "100"]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("denied at 0x2000"),
        "the first refused address: {:?}",
        out.stderr
    );
    drop(node);
}

#[test]
fn read_from_a_silent_port_times_out_within_the_timeout() {
    let port = free_port();
    let target = format!("udp://127.0.0.1:{port}");
    let mut cmd = Command::new(oxmem());
    cmd.args([
        "read",
        "--target",
        &target,
        "--addr",
        "0",
        "--len",
        "8",
        "--timeout",
        "1s",
    ]);
    let out = run(cmd, LIMIT);
    println!("silent port: {:?} after {:?}", out.stderr.trim(), out.took);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("timed out"),
        "stderr names the timeout: {:?}",
        out.stderr
    );
    assert!(
        out.took >= Duration::from_millis(900),
        "took {:?}",
        out.took
    );
    assert!(out.took < Duration::from_secs(4), "took {:?}", out.took);
}

#[test]
fn a_node_stops_by_itself_after_run_for_and_reports_its_counters() {
    let (node, target) = start_node(&["--open-window", "0:1MiB", "--run-for", "2s"]);
    write(&target, 8, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let (status, lines, stderr) = node.finish(Duration::from_secs(10));
    let status = status.expect("the node exits by itself");
    assert!(status.success(), "{status}: {stderr}");
    let last = lines.last().expect("a final counters line");
    assert!(
        last.contains("written 8 B"),
        "final counters count the write: {last:?}"
    );
}

/// The value of the first sample of `name` (with any labels) in Prometheus text.
fn sample(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}{{{label}}} in\n{text}"))
}

#[test]
fn metrics_count_requests_denials_and_service_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (node, target) = start_node(&[
        "--open-window",
        "0:1MiB",
        "--metrics",
        &metrics,
        "--run-for",
        "20s",
    ]);
    write(&target, 0x40, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(read(&target, 0x40, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
    let denied = client("read", &target, &["--addr", "0x200000", "--len", "8"]);
    assert!(!run(denied, LIMIT).status.success());
    // The node copies its counters into the registry every 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    let text = reqwest::blocking::get(format!("http://{metrics}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        sample(&text, "oxmem_node_requests_total", "op=\"get\""),
        2.0,
        "one granted, one denied Get"
    );
    assert_eq!(
        sample(&text, "oxmem_node_requests_total", "op=\"put_full_data\""),
        1.0
    );
    assert_eq!(
        sample(&text, "oxmem_node_denied_total", "reason=\"no_grant\""),
        1.0
    );
    assert_eq!(sample(&text, "oxmem_node_read_bytes_total", ""), 8.0);
    assert_eq!(sample(&text, "oxmem_node_written_bytes_total", ""), 8.0);
    assert_eq!(
        sample(&text, "oxmem_node_service_seconds_count", ""),
        3.0,
        "every request timed"
    );
    assert!(
        text.contains("oxmem_node_service_seconds_bucket"),
        "a real histogram:\n{text}"
    );
    assert!(sample(&text, "oxmem_node_frames_received_total", "transport") > 0.0);
    drop(node);
}
