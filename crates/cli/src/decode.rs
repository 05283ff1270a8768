//! `oxmem decode`: an OmniXtend protocol analyser for pcap and pcapng captures.
//!
//! Each packet becomes a [`FrameRecord`]: plain data that says what the frame holds, including
//! every error the codec found. Records are then written as text (one line per frame, one
//! indented line per TileLink message) or as JSON lines. Nothing is skipped: frames of another
//! EtherType, other link types and malformed frames all get a line.

use std::fmt::{self, Write as _};
use std::io::{self, BufRead, Write};
use std::time::Duration;

use oxmem_wire::{
    ByteOrder, Channel, EthernetFrame, EthernetRepr, Message, Op, Payload, TloeFrame, TloeHeader,
    TloeHeaderRepr,
};
use pcap_file::DataLink;
use serde::Serialize;

use crate::capture::{CaptureError, CaptureReader, Packet};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The EtherType that marks OmniXtend frames.
    pub ethertype: u16,
    /// How message data bytes are laid out in flits.
    pub order: ByteOrder,
    /// Keep (and print) message data.
    pub data: bool,
    /// JSON lines instead of text.
    pub json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ethertype: oxmem_wire::ETHERTYPE_OMNIXTEND,
            order: ByteOrder::Spec,
            data: false,
            json: false,
        }
    }
}

/// Parses an EtherType given as `0xAAAA` (hex) or `43690` (decimal).
///
/// # Errors
/// A message for the user when the text is not a 16-bit number.
pub fn parse_ethertype(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a 16-bit EtherType (write 0xAAAA or 43690)"))
}

/// The TLoE header fields, read from the header view so that they can be shown even when a
/// field holds a reserved value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRecord {
    pub vc: u8,
    /// Bits 60:57: 0 in 1.0.3; the message type in the "1.1" variant.
    pub frame_type_bits: u8,
    pub seq: u32,
    pub seq_ack: u32,
    pub ack: bool,
    /// Bits 7:5: 0 for none, 1 to 5 for A to E.
    pub credit_channel_bits: u8,
    /// Bits 4:0: the credit returned is 2^this.
    pub credit_exponent: u8,
}

impl HeaderRecord {
    fn read<T: AsRef<[u8]>>(h: &TloeHeader<T>) -> Self {
        Self {
            vc: h.vc(),
            frame_type_bits: h.frame_type_bits(),
            seq: h.seq(),
            seq_ack: h.seq_ack(),
            ack: h.ack(),
            credit_channel_bits: h.credit_channel_bits(),
            credit_exponent: h.credit_bits(),
        }
    }

    /// The message type by name: `normal`, `ack-only`, `open`, `close` or `reserved(N)`.
    pub fn frame_type(&self) -> String {
        match self.frame_type_bits {
            0 => "normal".into(),
            1 => "ack-only".into(),
            2 => "open".into(),
            3 => "close".into(),
            n => format!("reserved({n})"),
        }
    }

    /// The credit channel by name (`A` to `E`), `reserved(N)`, or `None` when no credit.
    pub fn credit_channel(&self) -> Option<String> {
        match self.credit_channel_bits {
            0 => None,
            bits => Some(match Channel::from_bits(bits) {
                Some(c) => format!("{c:?}"),
                None => format!("reserved({bits})"),
            }),
        }
    }

    /// Flits of credit returned, when a channel is named.
    pub fn credit(&self) -> Option<u64> {
        (self.credit_channel_bits != 0).then(|| 1u64 << self.credit_exponent)
    }
}

/// One TileLink message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub channel: Channel,
    pub op: Op,
    pub param: u8,
    /// log2 of the byte count.
    pub size: u8,
    pub domain: u8,
    /// Channels A to D.
    pub source: Option<u32>,
    /// D Grant, GrantData and E GrantAck.
    pub sink: Option<u32>,
    /// Channels A, B and C.
    pub address: Option<u64>,
    /// Bytes of data carried (whole beats).
    pub data_len: usize,
    pub denied: bool,
    pub corrupt: bool,
    /// The data in memory order, kept only when asked for.
    pub data: Option<Vec<u8>>,
    /// PutPartialData only, with the data: which bytes are written.
    pub enabled: Option<Vec<bool>>,
}

impl MessageRecord {
    fn new(msg: &Message<'_>, keep_data: bool) -> Self {
        let (data_len, data, enabled) = match &msg.payload {
            Payload::None => (0, None, None),
            Payload::Data(d) => (d.len(), keep_data.then(|| d.to_vec()), None),
            Payload::Masked(m) => (
                m.len(),
                keep_data.then(|| (0..m.len()).map(|i| m.byte(i)).collect()),
                keep_data.then(|| (0..m.len()).map(|i| m.enabled(i)).collect()),
            ),
        };
        let carries_sink = msg.channel == Channel::E
            || (msg.channel == Channel::D && matches!(msg.op, Op::Grant | Op::GrantData));
        Self {
            channel: msg.channel,
            op: msg.op,
            param: msg.param,
            size: msg.size,
            domain: msg.domain,
            source: (msg.channel != Channel::E).then_some(msg.source),
            sink: carries_sink.then_some(msg.sink),
            address: matches!(msg.channel, Channel::A | Channel::B | Channel::C)
                .then_some(msg.address),
            data_len,
            denied: msg.denied,
            corrupt: msg.corrupt,
            data,
            enabled,
        }
    }

    /// Bytes the message covers (2^size).
    pub fn size_bytes(&self) -> u64 {
        1 << self.size
    }
}

/// The TileLink name of a param value for an operation (TileLink 1.8.0 §5 and §6.2), if the
/// operation defines one.
pub fn param_name(op: Op, param: u8) -> Option<&'static str> {
    let names: &[&str] = match op {
        Op::ArithmeticData => &["MIN", "MAX", "MINU", "MAXU", "ADD"],
        Op::LogicalData => &["XOR", "OR", "AND", "SWAP"],
        Op::Intent => &["PrefetchRead", "PrefetchWrite"],
        // Grow permissions.
        Op::AcquireBlock | Op::AcquirePerm => &["NtoB", "NtoT", "BtoT"],
        // Cap permissions.
        Op::ProbeBlock | Op::ProbePerm | Op::Grant | Op::GrantData => &["toT", "toB", "toN"],
        // Prune and Report permissions.
        Op::ProbeAck | Op::ProbeAckData | Op::Release | Op::ReleaseData => {
            &["TtoB", "TtoN", "BtoN", "TtoT", "BtoB", "NtoN"]
        }
        _ => &[],
    };
    names.get(usize::from(param)).copied()
}

/// Everything shown for one captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    /// 1-based, as in Wireshark.
    pub index: u64,
    pub ts: Option<Duration>,
    pub ts_digits: u8,
    /// Captured bytes.
    pub len: usize,
    /// Bytes on the wire.
    pub orig_len: u32,
    /// The Ethernet header, when the packet is Ethernet and long enough to have one.
    pub ethernet: Option<EthernetRepr>,
    /// Set when the EtherType is not the OmniXtend one: the frame is shown, not decoded.
    pub foreign: bool,
    /// The TLoE header, when there are at least 8 bytes of it.
    pub header: Option<HeaderRecord>,
    /// Messages decoded before any error.
    pub messages: Vec<MessageRecord>,
    /// What went wrong, in the order found.
    pub errors: Vec<String>,
}

/// Decodes one captured packet. Never fails: problems become [`FrameRecord::errors`].
pub fn decode_packet(index: u64, packet: &Packet, opts: &Options) -> FrameRecord {
    let mut record = FrameRecord {
        index,
        ts: packet.ts,
        ts_digits: packet.ts_digits,
        len: packet.data.len(),
        orig_len: packet.orig_len,
        ethernet: None,
        foreign: false,
        header: None,
        messages: Vec::new(),
        errors: Vec::new(),
    };
    if packet.link != DataLink::ETHERNET {
        record.errors.push(format!(
            "unsupported link type {} ({:?}): only Ethernet frames are decoded",
            u32::from(packet.link),
            packet.link
        ));
        return record;
    }
    let bytes = &packet.data[..];
    let eth = match EthernetFrame::new_checked(bytes) {
        Ok(eth) => eth,
        Err(e) => {
            record.errors.push(e.to_string());
            return record;
        }
    };
    let repr = EthernetRepr::parse(&eth);
    record.ethernet = Some(repr);
    if repr.ethertype != opts.ethertype {
        record.foreign = true;
        return record;
    }
    let tloe = eth.payload();
    // Show the header whenever there is one, even if the frame as a whole is malformed: a
    // capture with the FCS kept, for instance, is not flit-aligned but its header is readable.
    if let Ok(view) = TloeHeader::new_checked(tloe) {
        record.header = Some(HeaderRecord::read(&view));
    }
    let frame = match TloeFrame::new_checked(tloe) {
        Ok(frame) => frame,
        Err(e) => {
            record.errors.push(e.to_string());
            return record;
        }
    };
    if let Err(e) = TloeHeaderRepr::parse(&frame.header()) {
        record.errors.push(e.to_string());
    }
    // Messages do not depend on the header: walk them even after a header error.
    for msg in frame.messages(opts.order) {
        match msg {
            Ok(msg) => record.messages.push(MessageRecord::new(&msg, opts.data)),
            Err(e) => record.errors.push(e.to_string()),
        }
    }
    record
}

/// Formats a timestamp as seconds with `digits` fraction digits (at most 9).
pub fn format_ts(ts: Duration, digits: u8) -> String {
    let digits = digits.min(9);
    if digits == 0 {
        return ts.as_secs().to_string();
    }
    let frac = ts.subsec_nanos() / 10u32.pow(9 - u32::from(digits));
    format!(
        "{}.{:0width$}",
        ts.as_secs(),
        frac,
        width = usize::from(digits)
    )
}

/// Text for the "not OmniXtend" case, shared by text and JSON output.
fn foreign_text(ethertype: u16) -> String {
    format!("not OmniXtend (ethertype {ethertype:#06x})")
}

impl fmt::Display for HeaderRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frame_type_bits == 0 {
            write!(f, "normal")?;
        } else {
            write!(f, "1.1 {}", self.frame_type())?;
        }
        write!(
            f,
            " vc={} seq={:#x} seq_ack={:#x} {}",
            self.vc,
            self.seq,
            self.seq_ack,
            if self.ack { "ACK" } else { "NAK" }
        )?;
        match self.credit_channel() {
            None => write!(f, " credit=none"),
            Some(c) => write!(f, " credit={c}:2^{}", self.credit_exponent),
        }
    }
}

impl fmt::Display for MessageRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?}", self.channel, self.op)?;
        if self.channel != Channel::E {
            match param_name(self.op, self.param) {
                Some(name) => write!(f, " param={name}")?,
                None => write!(f, " param={}", self.param)?,
            }
            write!(f, " size={}", self.size_bytes())?;
        }
        if let Some(source) = self.source {
            write!(f, " source={source:#x}")?;
        }
        if let Some(sink) = self.sink {
            write!(f, " sink={sink:#x}")?;
        }
        if let Some(address) = self.address {
            write!(f, " address={address:#x}")?;
        }
        if self.data_len > 0 {
            write!(f, " data={}", self.data_len)?;
        }
        if self.domain != 0 {
            write!(f, " domain={}", self.domain)?;
        }
        if self.denied {
            write!(f, " denied")?;
        }
        if self.corrupt {
            write!(f, " corrupt")?;
        }
        Ok(())
    }
}

/// Indentation of message and error lines under their frame line.
const INDENT: &str = "    ";

/// Formats a frame as text: the frame line, then one line per message (with a hex dump of its
/// data when kept), then one line per error.
pub fn format_text(r: &FrameRecord) -> String {
    let mut s = format!("#{}", r.index);
    match r.ts {
        Some(ts) => write!(s, " {}", format_ts(ts, r.ts_digits)),
        None => write!(s, " -"),
    }
    .expect("writing to a String");
    if let Some(eth) = &r.ethernet {
        write!(s, " {} → {}", eth.src, eth.dst).expect("writing to a String");
    }
    write!(s, " len={}", r.len).expect("writing to a String");
    if u64::from(r.orig_len) > r.len as u64 {
        write!(s, " (cut from {})", r.orig_len).expect("writing to a String");
    }
    match (&r.ethernet, &r.header) {
        (Some(eth), _) if r.foreign => {
            write!(s, " {}", foreign_text(eth.ethertype)).expect("writing to a String");
        }
        (_, Some(header)) => write!(s, " {header}").expect("writing to a String"),
        _ => {}
    }
    // Without an Ethernet header there is nothing to indent under: the error ends the line.
    if r.ethernet.is_none() {
        for e in &r.errors {
            write!(s, " error: {e}").expect("writing to a String");
        }
        s.push('\n');
        return s;
    }
    s.push('\n');
    for m in &r.messages {
        writeln!(s, "{INDENT}{m}").expect("writing to a String");
        if let Some(data) = &m.data {
            hex_dump(&mut s, data, m.enabled.as_deref());
        }
    }
    for e in &r.errors {
        writeln!(s, "{INDENT}error: {e}").expect("writing to a String");
    }
    s
}

/// 16 bytes a line, offsets in hex; bytes a PutPartialData mask leaves unwritten show as `--`.
fn hex_dump(s: &mut String, data: &[u8], enabled: Option<&[bool]>) {
    for (line, chunk) in data.chunks(16).enumerate() {
        write!(s, "{INDENT}{INDENT}{:04x}:", line * 16).expect("writing to a String");
        for (k, b) in chunk.iter().enumerate() {
            let on = enabled.is_none_or(|e| e.get(line * 16 + k).copied().unwrap_or(true));
            if on {
                write!(s, " {b:02x}")
            } else {
                write!(s, " --")
            }
            .expect("writing to a String");
        }
        s.push('\n');
    }
}

/// The JSON form of a frame; field names are part of the command's interface.
#[derive(Debug, Serialize)]
struct JsonFrame {
    index: u64,
    /// Seconds since the epoch.
    ts: Option<f64>,
    src: Option<String>,
    dst: Option<String>,
    /// Hex, `0xaaaa`.
    ethertype: Option<String>,
    len: usize,
    header: Option<JsonHeader>,
    messages: Vec<JsonMessage>,
    /// The errors, joined by `; `, or the "not OmniXtend" note.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct JsonHeader {
    frame_type: String,
    vc: u8,
    seq: u32,
    seq_ack: u32,
    ack: bool,
    credit_channel: Option<String>,
    /// Flits returned (2^exponent).
    credit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct JsonMessage {
    channel: String,
    op: String,
    param: u8,
    /// Bytes (2^size).
    size: u64,
    domain: u8,
    source: Option<u32>,
    sink: Option<u32>,
    /// Hex, because 64-bit addresses do not survive JSON numbers in most readers.
    address: Option<String>,
    data_len: usize,
    denied: bool,
    corrupt: bool,
    /// Hex, in memory order; only with `--data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

/// Formats a frame as one JSON object (no newline).
pub fn format_json(r: &FrameRecord) -> String {
    let error = if r.foreign {
        r.ethernet.map(|eth| foreign_text(eth.ethertype))
    } else if r.errors.is_empty() {
        None
    } else {
        Some(r.errors.join("; "))
    };
    let frame = JsonFrame {
        index: r.index,
        ts: r.ts.map(|ts| ts.as_secs_f64()),
        src: r.ethernet.map(|e| e.src.to_string()),
        dst: r.ethernet.map(|e| e.dst.to_string()),
        ethertype: r.ethernet.map(|e| format!("{:#06x}", e.ethertype)),
        len: r.len,
        header: r.header.map(|h| JsonHeader {
            frame_type: h.frame_type(),
            vc: h.vc,
            seq: h.seq,
            seq_ack: h.seq_ack,
            ack: h.ack,
            credit_channel: h.credit_channel(),
            credit: h.credit(),
        }),
        messages: r
            .messages
            .iter()
            .map(|m| JsonMessage {
                channel: format!("{:?}", m.channel),
                op: format!("{:?}", m.op),
                param: m.param,
                size: m.size_bytes(),
                domain: m.domain,
                source: m.source,
                sink: m.sink,
                address: m.address.map(|a| format!("{a:#x}")),
                data_len: m.data_len,
                denied: m.denied,
                corrupt: m.corrupt,
                data: m
                    .data
                    .as_ref()
                    .map(|d| d.iter().map(|b| format!("{b:02x}")).collect()),
            })
            .collect(),
        error,
    };
    serde_json::to_string(&frame).expect("plain data serialises")
}

/// Counts over a whole capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub frames: u64,
    pub messages: u64,
    /// Error lines printed (a frame can have more than one).
    pub errors: u64,
    /// Frames of another EtherType.
    pub foreign: u64,
}

impl Summary {
    fn add(&mut self, r: &FrameRecord) {
        self.frames += 1;
        self.messages += r.messages.len() as u64;
        self.errors += r.errors.len() as u64;
        self.foreign += u64::from(r.foreign);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: {} frames ({} not OmniXtend), {} messages, {} errors",
            self.frames, self.foreign, self.messages, self.errors
        )
    }
}

/// Why [`run`] stopped early.
#[derive(Debug)]
pub enum RunError {
    /// The capture ended in a broken record after `packets` good ones (already printed).
    Capture { packets: u64, error: CaptureError },
    /// The output could not be written.
    Output(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Capture { packets, error } => {
                write!(f, "the capture breaks off after {packets} packets: {error}")
            }
            Self::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

// The inner error is part of the message, so it is not also reported as the source.
impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        Self::Output(e)
    }
}

/// Decodes every packet of a capture and writes it to `out`; in text mode ends with the
/// summary line (also when the capture breaks off).
///
/// # Errors
/// [`RunError::Capture`] when a record of the file cannot be read (the packets before it are
/// written), [`RunError::Output`] when writing fails.
pub fn run<R: BufRead, W: Write>(
    capture: &mut CaptureReader<R>,
    opts: &Options,
    out: &mut W,
) -> Result<Summary, RunError> {
    let mut summary = Summary::default();
    let mut broken = None;
    while let Some(packet) = capture.next_packet() {
        let packet = match packet {
            Ok(p) => p,
            Err(error) => {
                broken = Some(error);
                break;
            }
        };
        let record = decode_packet(summary.frames + 1, &packet, opts);
        summary.add(&record);
        if opts.json {
            writeln!(out, "{}", format_json(&record))?;
        } else {
            write!(out, "{}", format_text(&record))?;
        }
    }
    if !opts.json {
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    match broken {
        Some(error) => Err(RunError::Capture {
            packets: summary.frames,
            error,
        }),
        None => Ok(summary),
    }
}

#[cfg(test)]
mod tests {
    use oxmem_wire::{
        CreditGrant, EthernetAddress, FrameBuilder, FrameType, MIN_ETHERNET_PAYLOAD, ethernet,
    };

    use super::*;

    const SRC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const DST: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    /// An Ethernet frame holding `msgs` under `header`, built with the codec.
    fn frame(header: &TloeHeaderRepr, msgs: &[Message<'_>], ethertype: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut b = FrameBuilder::new(
            &mut buf[ethernet::HEADER_LEN..],
            usize::MAX,
            ByteOrder::Spec,
        )
        .unwrap();
        for m in msgs {
            b.push(m).unwrap();
        }
        let len = b.finish(header, MIN_ETHERNET_PAYLOAD).unwrap();
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src(SRC);
        eth.set_dst(DST);
        eth.set_ethertype(ethertype);
        buf.truncate(ethernet::HEADER_LEN + len);
        buf
    }

    fn packet(data: Vec<u8>) -> Packet {
        Packet {
            ts: Some(Duration::new(3, 250_000_000)),
            ts_digits: 6,
            link: DataLink::ETHERNET,
            orig_len: data.len() as u32,
            data,
        }
    }

    fn header() -> TloeHeaderRepr {
        TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::Normal,
            seq: 0x2e50d,
            seq_ack: 0x56d4b,
            ack: true,
            credit: Some(CreditGrant {
                channel: Channel::B,
                exponent: 8,
            }),
        }
    }

    #[test]
    fn ethertype_accepts_hex_and_decimal() {
        assert_eq!(parse_ethertype("0xAAAA"), Ok(0xaaaa));
        assert_eq!(parse_ethertype("0x0800"), Ok(0x0800));
        assert_eq!(parse_ethertype("43690"), Ok(0xaaaa));
        assert!(parse_ethertype("0x10000").is_err());
        assert!(
            parse_ethertype("ip")
                .unwrap_err()
                .contains("not a 16-bit EtherType")
        );
    }

    #[test]
    fn timestamps_keep_the_capture_resolution() {
        let ts = Duration::new(12, 345_678_901);
        assert_eq!(format_ts(ts, 6), "12.345678");
        assert_eq!(format_ts(ts, 9), "12.345678901");
        assert_eq!(format_ts(ts, 0), "12");
    }

    #[test]
    fn a_get_frame_prints_header_and_message_lines() {
        let bytes = frame(
            &header(),
            &[Message::get(0x10f3355, 0x7ba8_0000_130e_c440, 5)],
            0xaaaa,
        );
        let r = decode_packet(1, &packet(bytes), &Options::default());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            format_text(&r),
            "#1 3.250000 02:00:00:00:00:01 → 02:00:00:00:00:02 len=62 normal vc=0 \
             seq=0x2e50d seq_ack=0x56d4b ACK credit=B:2^8\n    \
             A Get param=0 size=32 source=0x10f3355 address=0x7ba80000130ec440\n"
        );
    }

    #[test]
    fn json_names_every_field() {
        let data: Vec<u8> = (0..8).collect();
        let bytes = frame(
            &header(),
            &[Message::access_ack_data(7, 3, true, &data)],
            0xaaaa,
        );
        let opts = Options {
            data: true,
            ..Options::default()
        };
        let r = decode_packet(4, &packet(bytes), &opts);
        let v: serde_json::Value = serde_json::from_str(&format_json(&r)).unwrap();
        assert_eq!(v["index"], 4);
        assert_eq!(v["ts"], 3.25);
        assert_eq!(v["src"], "02:00:00:00:00:01");
        assert_eq!(v["ethertype"], "0xaaaa");
        assert_eq!(v["header"]["frame_type"], "normal");
        assert_eq!(v["header"]["credit_channel"], "B");
        assert_eq!(v["header"]["credit"], 256);
        let m = &v["messages"][0];
        assert_eq!(m["channel"], "D");
        assert_eq!(m["op"], "AccessAckData");
        assert_eq!(m["size"], 8);
        assert_eq!(m["source"], 7);
        assert_eq!(m["sink"], serde_json::Value::Null);
        assert_eq!(m["address"], serde_json::Value::Null);
        assert_eq!(m["data_len"], 8);
        assert_eq!(m["denied"], true);
        assert_eq!(m["data"], "0001020304050607");
        assert_eq!(v["error"], serde_json::Value::Null);
    }

    #[test]
    fn one_one_frame_types_are_hinted() {
        let h = TloeHeaderRepr {
            frame_type: FrameType::AckOnly,
            credit: None,
            ack: false,
            ..header()
        };
        let r = decode_packet(1, &packet(frame(&h, &[], 0xaaaa)), &Options::default());
        let text = format_text(&r);
        assert!(
            text.contains(" 1.1 ack-only vc=0 seq=0x2e50d seq_ack=0x56d4b NAK credit=none\n"),
            "{text}"
        );
    }

    #[test]
    fn reserved_header_fields_still_show_the_header_and_messages() {
        let mut bytes = frame(&header(), &[Message::grant_ack(3)], 0xaaaa);
        bytes[ethernet::HEADER_LEN] |= 0b0000_1010; // message type 5
        let r = decode_packet(1, &packet(bytes), &Options::default());
        assert_eq!(r.errors, ["reserved TLoE message type 5"]);
        assert_eq!(r.messages.len(), 1);
        let text = format_text(&r);
        assert!(text.contains(" 1.1 reserved(5) vc=0 seq=0x2e50d"), "{text}");
        assert!(text.contains("\n    E GrantAck sink=0x3\n"), "{text}");
        assert!(
            text.ends_with("    error: reserved TLoE message type 5\n"),
            "{text}"
        );
    }

    #[test]
    fn another_ethertype_is_shown_not_decoded() {
        let bytes = frame(&header(), &[Message::get(1, 0x40, 3)], 0x0800);
        let r = decode_packet(2, &packet(bytes), &Options::default());
        assert!(r.foreign && r.header.is_none() && r.messages.is_empty());
        assert!(
            format_text(&r).ends_with(" len=62 not OmniXtend (ethertype 0x0800)\n"),
            "{}",
            format_text(&r)
        );
        let v: serde_json::Value = serde_json::from_str(&format_json(&r)).unwrap();
        assert_eq!(v["error"], "not OmniXtend (ethertype 0x0800)");
    }

    #[test]
    fn a_configured_ethertype_is_decoded() {
        let bytes = frame(&header(), &[Message::get(1, 0x40, 3)], 0x0000);
        let opts = Options {
            ethertype: 0,
            ..Options::default()
        };
        let r = decode_packet(1, &packet(bytes), &opts);
        assert!(!r.foreign);
        assert_eq!(r.messages[0].op, Op::Get);
    }

    #[test]
    fn a_runt_packet_reports_the_codec_error_on_its_line() {
        let r = decode_packet(9, &packet(vec![0xff; 10]), &Options::default());
        assert_eq!(
            format_text(&r),
            "#9 3.250000 len=10 error: truncated: need 14 bytes, have 10\n"
        );
    }

    #[test]
    fn other_link_types_are_named() {
        let mut p = packet(vec![0x45; 40]);
        p.link = DataLink::RAW;
        let r = decode_packet(1, &p, &Options::default());
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].starts_with("unsupported link type 101 (RAW)"));
    }

    #[test]
    fn byte_order_decides_the_data_dump() {
        let data: Vec<u8> = (0x40..0x50).collect();
        let bytes = frame(
            &header(),
            &[Message::put_full_data(1, 0x40, 4, &data)],
            0xaaaa,
        );
        let spec = Options {
            data: true,
            ..Options::default()
        };
        let text = format_text(&decode_packet(1, &packet(bytes.clone()), &spec));
        assert!(
            text.contains("        0000: 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f\n"),
            "{text}"
        );
        let memory = Options {
            order: ByteOrder::Memory,
            ..spec
        };
        let text = format_text(&decode_packet(1, &packet(bytes), &memory));
        assert!(
            text.contains("        0000: 47 46 45 44 43 42 41 40 4f 4e 4d 4c 4b 4a 49 48\n"),
            "{text}"
        );
    }

    #[test]
    fn partial_writes_mark_disabled_bytes() {
        let data: Vec<u8> = (0..8).collect();
        let mask = [0b0000_1111, 0, 0, 0, 0, 0, 0, 0];
        let bytes = frame(
            &header(),
            &[Message::put_partial_data(1, 0x40, 3, &data, &mask)],
            0xaaaa,
        );
        let opts = Options {
            data: true,
            ..Options::default()
        };
        let text = format_text(&decode_packet(1, &packet(bytes), &opts));
        assert!(
            text.contains("        0000: 00 01 02 03 -- -- -- --\n"),
            "{text}"
        );
    }

    #[test]
    fn params_have_their_tilelink_names() {
        assert_eq!(param_name(Op::AcquireBlock, 0), Some("NtoB"));
        assert_eq!(param_name(Op::GrantData, 1), Some("toB"));
        assert_eq!(param_name(Op::Release, 5), Some("NtoN"));
        assert_eq!(param_name(Op::ArithmeticData, 4), Some("ADD"));
        assert_eq!(param_name(Op::Get, 0), None);
        assert_eq!(param_name(Op::LogicalData, 9), None);
    }

    #[test]
    fn summary_counts_frames_messages_errors_and_foreign_frames() {
        let mut s = Summary::default();
        let good = decode_packet(
            1,
            &packet(frame(&header(), &[Message::get(1, 0x40, 3)], 0xaaaa)),
            &Options::default(),
        );
        let foreign = decode_packet(
            2,
            &packet(frame(&header(), &[], 0x86dd)),
            &Options::default(),
        );
        let runt = decode_packet(3, &packet(vec![0; 4]), &Options::default());
        for r in [&good, &foreign, &runt] {
            s.add(r);
        }
        assert_eq!(
            s.to_string(),
            "summary: 3 frames (1 not OmniXtend), 1 messages, 1 errors"
        );
    }
}
