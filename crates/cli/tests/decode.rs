//! `oxmem decode` run as a process on capture files.
//!
//! The expected values come from reading the fixtures' bytes by hand (spec Appendix A for
//! spec-examples.pcap; the SiFive U540 capture for the rest).

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wire/tests/fixtures")
        .join(name)
}

/// A path for a file this test writes; each test uses its own name.
fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn oxmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxmem"))
        .args(args)
        .output()
        .expect("run oxmem")
}

/// Runs `oxmem decode` and returns stdout, insisting on exit status 0 and no stderr.
fn decode(file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["decode", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = oxmem(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The lines of frame `index` (its frame line and the indented lines under it).
fn frame_block(text: &str, index: u32) -> Vec<&str> {
    let start = format!("#{index} ");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&start));
    let mut block = vec![
        lines
            .next()
            .unwrap_or_else(|| panic!("no {start}in\n{text}")),
    ];
    block.extend(lines.take_while(|l| l.starts_with("    ")));
    block
}

fn frame_lines(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with('#')).count()
}

/// The packets of a pcap file: (timestamp, bytes).
fn read_pcap(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let mut reader = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut packets = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        packets.push((p.timestamp, p.data.into_owned()));
    }
    packets
}

fn write_pcap(path: &Path, header: PcapHeader, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_secs(i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .unwrap();
    }
}

/// The same packets as a pcapng with microsecond timestamps (the pcapng default resolution).
fn write_pcapng(path: &Path, packets: &[(Duration, Vec<u8>)]) {
    let mut w = PcapNgWriter::new(File::create(path).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0xffff,
        options: vec![InterfaceDescriptionOption::IfTsResol(6)],
    })
    .unwrap();
    for (ts, data) in packets {
        // pcap-file writes `timestamp.as_nanos()` as the raw count of interface units, so a
        // count of microseconds goes in as that many "nanoseconds".
        let units = Duration::from_nanos(ts.as_micros() as u64);
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: units,
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })
        .unwrap();
    }
}

/// Spec Appendix A.1.1's first frame: TLoE header then a Get, padded, mask 1.
fn spec_get_frame() -> Vec<u8> {
    read_pcap(&fixture("spec-examples.pcap")).swap_remove(0).1
}

#[test]
fn spec_examples_show_the_appendix_values() {
    let text = decode(&fixture("spec-examples.pcap"), &[]);
    assert_eq!(frame_lines(&text), 7);
    assert_eq!(
        frame_block(&text, 1),
        [
            "#1 0.000000 0e:8b:00:00:00:00 → 08:00:20:77:05:38 len=62 normal vc=0 \
             seq=0x2e50d seq_ack=0x56d4b ACK credit=B:2^8",
            "    A Get param=0 size=32 source=0x10f3355 address=0x7ba80000130ec440",
        ]
    );
    assert_eq!(
        frame_block(&text, 2)[1],
        "    A PutFullData param=0 size=64 source=0x10f3355 address=0x7ba80000130ec440 data=64"
    );
    assert_eq!(
        frame_block(&text, 3)[1],
        "    B PutPartialData param=0 size=16 source=0x10f3355 address=0x7ba80000130ec440 data=16"
    );
    assert_eq!(
        frame_block(&text, 6)[1],
        "    D Grant param=toT size=64 source=0x10f3355 sink=0x1a6b2d"
    );
    assert_eq!(frame_block(&text, 7)[1], "    E GrantAck sink=0x1a6b2d");
    assert_eq!(
        text.lines().last(),
        Some("summary: 7 frames (0 not OmniXtend), 7 messages, 0 errors")
    );
}

#[test]
fn spec_examples_json_carries_the_same_values() {
    let frames = json_lines(&decode(&fixture("spec-examples.pcap"), &["--json"]));
    assert_eq!(frames.len(), 7);
    let first = &frames[0];
    assert_eq!(first["index"], 1);
    assert_eq!(first["ts"], 0.0);
    assert_eq!(first["src"], "0e:8b:00:00:00:00");
    assert_eq!(first["dst"], "08:00:20:77:05:38");
    assert_eq!(first["ethertype"], "0xaaaa");
    assert_eq!(first["len"], 62);
    assert_eq!(first["error"], Value::Null);
    let h = &first["header"];
    assert_eq!(h["frame_type"], "normal");
    assert_eq!(h["vc"], 0);
    assert_eq!(h["seq"], 0x2e50d);
    assert_eq!(h["seq_ack"], 0x56d4b);
    assert_eq!(h["ack"], true);
    assert_eq!(h["credit_channel"], "B");
    assert_eq!(h["credit"], 256);
    let messages = first["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    let get = &messages[0];
    assert_eq!(get["channel"], "A");
    assert_eq!(get["op"], "Get");
    assert_eq!(get["param"], 0);
    assert_eq!(get["size"], 32);
    assert_eq!(get["source"], 0x10f3355);
    assert_eq!(get["sink"], Value::Null);
    assert_eq!(get["address"], "0x7ba80000130ec440");
    assert_eq!(get["data_len"], 0);
    assert_eq!(get["denied"], false);
    assert_eq!(get["corrupt"], false);
    // Grant carries both a source and a sink, and no address.
    let grant = &frames[5]["messages"][0];
    assert_eq!(grant["op"], "Grant");
    assert_eq!(grant["sink"], 0x1a6b2d);
    assert_eq!(grant["address"], Value::Null);
}

#[test]
fn sifive_capture_decodes_every_frame_without_errors() {
    let text = decode(&fixture("sifive-u540-capture.pcap"), &[]);
    assert_eq!(frame_lines(&text), 20);
    assert!(!text.contains("error:"), "{text}");
    assert_eq!(
        text.lines().last(),
        Some("summary: 20 frames (0 not OmniXtend), 13 messages, 0 errors")
    );
    let json = json_lines(&decode(&fixture("sifive-u540-capture.pcap"), &["--json"]));
    assert_eq!(json.len(), 20);
    assert!(json.iter().all(|f| f["error"].is_null()));
}

#[test]
fn sifive_capture_shows_the_acquire_grant_exchange() {
    let text = decode(&fixture("sifive-u540-capture.pcap"), &[]);
    // Frame 1: header 00 06 39 33 66 dd 3a 00, message 1c 06 .. 08 / 00 .. 81 12 1c 00.
    assert_eq!(
        frame_block(&text, 1),
        [
            "#1 0.000000 02:02:02:02:02:02 → 02:02:02:02:02:02 len=62 normal vc=0 \
             seq=0x63933 seq_ack=0x19b74e ACK credit=none",
            "    A AcquireBlock param=NtoB size=64 source=0x8 address=0x81121c00",
        ]
    );
    // Frame 2: the other side acknowledges 0x63933, returns 2^0 credit on A and grants the
    // block (4a 16: channel D, GrantData, toB, 2^6) with sink 0 and eight data beats.
    assert_eq!(
        frame_block(&text, 2),
        [
            "#2 1.000000 02:02:02:02:02:02 → 02:02:02:02:02:02 len=110 normal vc=0 \
             seq=0x19b74f seq_ack=0x63933 ACK credit=A:2^0",
            "    D GrantData param=toB size=64 source=0x8 sink=0x0 data=64",
        ]
    );
    // Frame 4: GrantAck (50 00 ..) with 2^2 credits returned on D.
    assert_eq!(
        frame_block(&text, 4),
        [
            "#4 3.000000 02:02:02:02:02:02 → 02:02:02:02:02:02 len=62 normal vc=0 \
             seq=0x63934 seq_ack=0x19b74f ACK credit=D:2^2",
            "    E GrantAck sink=0x0",
        ]
    );
    // Frame 16: the next cache block.
    assert_eq!(
        frame_block(&text, 16)[1],
        "    A AcquireBlock param=NtoB size=64 source=0x8 address=0x81121c80"
    );
}

#[test]
fn sifive_capture_shows_reads_of_0x200bff8_and_their_replies() {
    let text = decode(&fixture("sifive-u540-capture.pcap"), &["--data"]);
    // Frames 5 to 8: Get of 8 bytes (18 03 ..) at 0x200bff8 from four sources, domain byte set.
    for (index, source, domain) in [(5, 0x21, 5), (6, 0x41, 3), (7, 0x51, 2), (8, 0x31, 4)] {
        assert_eq!(
            frame_block(&text, index)[1],
            format!(
                "    A Get param=0 size=8 source={source:#x} address=0x200bff8 domain={domain}"
            )
        );
    }
    // Frames 11 to 14: AccessAckData (42 03 ..) of 8 bytes to the same sources, in order.
    for (index, source) in [(11, 0x21), (12, 0x41), (13, 0x51), (14, 0x31)] {
        let block = frame_block(&text, index);
        assert_eq!(
            block[1],
            format!("    D AccessAckData param=0 size=8 source={source:#x} data=8")
        );
        // Wire beat 80 00 00 00 19 a1 92 60 is, lowest address first, reversed.
        assert_eq!(block[2], "        0000: 60 92 a1 19 00 00 00 80");
    }
    assert!(frame_block(&text, 11)[0].ends_with(" seq=0xd007a seq_ack=0x11aa37 ACK credit=A:2^1"));
}

#[test]
fn sifive_capture_has_frames_that_only_carry_acks_and_credits() {
    let text = decode(&fixture("sifive-u540-capture.pcap"), &[]);
    // All-zero flits and a zero mask: no messages, only the header.
    for index in [3, 9, 10, 15, 17, 18, 20] {
        assert_eq!(frame_block(&text, index).len(), 1, "frame {index}");
    }
    assert!(frame_block(&text, 15)[0].ends_with(" seq=0x19b751 seq_ack=0x63935 ACK credit=E:2^0"));
    assert!(frame_block(&text, 9)[0].ends_with(" credit=D:2^1"));
    let json = json_lines(&decode(&fixture("sifive-u540-capture.pcap"), &["--json"]));
    let empty: Vec<u64> = json
        .iter()
        .filter(|f| f["messages"].as_array().unwrap().is_empty())
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(empty, [3, 9, 10, 15, 17, 18, 20]);
}

#[test]
fn pcapng_copy_decodes_identically() {
    for name in ["spec-examples", "sifive-u540-capture"] {
        let pcap = fixture(&format!("{name}.pcap"));
        let pcapng = scratch(&format!("{name}.pcapng"));
        write_pcapng(&pcapng, &read_pcap(&pcap));
        let bytes = std::fs::read(&pcapng).unwrap();
        assert_eq!(bytes[..4], [0x0a, 0x0d, 0x0d, 0x0a], "a pcapng file");
        for mode in [&[][..], &["--json"], &["--data"]] {
            assert_eq!(
                decode(&pcapng, mode),
                decode(&pcap, mode),
                "{name} {mode:?}"
            );
        }
    }
}

#[test]
fn malformed_frames_in_a_capture_are_each_reported() {
    let good = spec_get_frame();
    // Cut inside the TLoE frame: 10 of its 48 bytes.
    let truncated = good[..14 + 10].to_vec();
    // A Get at flit 1, then a flit with channel 7 that the mask marks as a message at flit 3.
    let mut reserved = good.clone();
    reserved[14 + 3 * 8] = 0x70;
    let mask_at = reserved.len() - 8;
    reserved[mask_at..].copy_from_slice(&0b101u64.to_be_bytes());
    // An IPv4 EtherType on otherwise the same bytes.
    let mut foreign = good.clone();
    foreign[12..14].copy_from_slice(&[0x08, 0x00]);
    let path = scratch("malformed.pcap");
    write_pcap(
        &path,
        PcapHeader::default(),
        &[good, truncated, reserved, foreign],
    );

    let text = decode(&path, &[]);
    assert_eq!(frame_lines(&text), 4);
    assert_eq!(
        frame_block(&text, 1)[1],
        "    A Get param=0 size=32 source=0x10f3355 address=0x7ba80000130ec440"
    );
    let cut = frame_block(&text, 2);
    assert!(
        cut[0].contains(" len=24 normal vc=0 seq=0x2e50d"),
        "{}",
        cut[0]
    );
    assert_eq!(cut[1..], ["    error: truncated: need 16 bytes, have 10"]);
    // The Get before the bad flit is still shown.
    assert_eq!(
        frame_block(&text, 3)[1..],
        [
            "    A Get param=0 size=32 source=0x10f3355 address=0x7ba80000130ec440",
            "    error: reserved TileLink channel 7 at flit 3",
        ]
    );
    assert_eq!(
        frame_block(&text, 4),
        ["#4 3.000000 0e:8b:00:00:00:00 → 08:00:20:77:05:38 len=62 \
          not OmniXtend (ethertype 0x0800)"]
    );
    assert_eq!(
        text.lines().last(),
        Some("summary: 4 frames (1 not OmniXtend), 2 messages, 2 errors")
    );

    let json = json_lines(&decode(&path, &["--json"]));
    assert_eq!(json[0]["error"], Value::Null);
    assert_eq!(json[1]["error"], "truncated: need 16 bytes, have 10");
    assert_eq!(json[2]["error"], "reserved TileLink channel 7 at flit 3");
    assert_eq!(json[2]["messages"][0]["op"], "Get");
    assert_eq!(json[3]["error"], "not OmniXtend (ethertype 0x0800)");
    assert_eq!(json[3]["header"], Value::Null);
}

#[test]
fn ethertype_option_takes_hex_or_decimal() {
    let file = fixture("sifive-u540-capture.pcap");
    assert_eq!(decode(&file, &["--ethertype", "43690"]), decode(&file, &[]));
    let text = decode(&file, &["--ethertype", "0x88b5"]);
    assert_eq!(
        text.matches(" not OmniXtend (ethertype 0xaaaa)\n").count(),
        20
    );
    assert!(text.ends_with("summary: 20 frames (20 not OmniXtend), 0 messages, 0 errors\n"));
}

#[test]
fn byte_order_memory_reads_data_lanes_unreversed() {
    let file = fixture("spec-examples.pcap");
    // Appendix A.1.2: bytes at 0x40..0x47 travel as 47 46 .. 40.
    let spec = decode(&file, &["--data"]);
    assert_eq!(
        frame_block(&spec, 2)[2],
        "        0000: 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f"
    );
    let memory = decode(&file, &["--data", "--byte-order", "memory"]);
    assert_eq!(
        frame_block(&memory, 2)[2],
        "        0000: 47 46 45 44 43 42 41 40 4f 4e 4d 4c 4b 4a 49 48"
    );
}

#[test]
fn a_file_that_is_not_a_capture_fails_with_a_clear_message() {
    let path = fixture("spec-vectors.txt");
    let out = oxmem(&["decode", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("spec-vectors.txt: not a pcap or pcapng capture (it starts with"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_fails_with_a_clear_message() {
    let out = oxmem(&["decode", "/nonexistent/capture.pcap"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot open /nonexistent/capture.pcap: No such file"),
        "{stderr}"
    );
}

#[test]
fn a_capture_of_another_link_type_is_refused_by_name() {
    let path = scratch("raw-ip.pcap");
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    write_pcap(&path, header, &[vec![0x45; 40]]);
    let out = oxmem(&["decode", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("unsupported link type 101 (RAW): only Ethernet (1)"),
        "{stderr}"
    );
}

#[test]
fn a_capture_cut_inside_a_record_prints_what_it_read_then_fails() {
    let bytes = std::fs::read(fixture("spec-examples.pcap")).unwrap();
    let path = scratch("cut.pcap");
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    let out = oxmem(&["decode", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(frame_lines(&stdout), 6);
    assert!(stdout.ends_with("summary: 6 frames (0 not OmniXtend), 6 messages, 0 errors\n"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("breaks off after 6 packets: the pcap file ends in the middle of a record"),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_subcommand() {
    let out = oxmem(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "decode", "node", "read", "write", "bench", "status", "coord", "up", "demo",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "{cmd} missing from\n{help}"
        );
    }
    // A wrong flag is refused with usage, before anything starts.
    let out = oxmem(&["demo", "--skip", "gpu"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip takes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oxmem(&["--version"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("oxmem {}\n", env!("CARGO_PKG_VERSION"))
    );
}
