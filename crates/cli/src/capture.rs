//! Reading packets from pcap and pcapng capture files.
//!
//! The format is chosen by the file's magic number, not its name. Packets come out one at a time
//! with their timestamp and link type, so a capture of any size is read in constant memory.

use std::fmt;
use std::io::{self, BufRead};
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};

/// Magic numbers of classic pcap, in the byte order they appear in the file
/// (microsecond and nanosecond variants, both endiannesses).
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
];
/// Block type of a pcapng Section Header Block; a palindrome, so the same in both byte orders.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// The two capture formats this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

impl Format {
    /// Recognises a capture by its first four bytes.
    pub fn detect(magic: &[u8]) -> Option<Self> {
        let magic: [u8; 4] = magic.get(..4)?.try_into().ok()?;
        if PCAP_MAGICS.contains(&magic) {
            Some(Self::Pcap)
        } else if magic == PCAPNG_MAGIC {
            Some(Self::PcapNg)
        } else {
            None
        }
    }
}

/// Why a capture could not be read.
#[derive(Debug)]
pub enum CaptureError {
    /// The file could not be read.
    Io(io::Error),
    /// The file does not start with a pcap or pcapng magic number.
    NotACapture { first_bytes: Vec<u8> },
    /// A classic pcap whose link type is not Ethernet: nothing in it can be decoded.
    UnsupportedLinkType(DataLink),
    /// The pcap-file crate refused the file's structure.
    Malformed { format: Format, error: PcapError },
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotACapture { first_bytes } if first_bytes.is_empty() => {
                write!(f, "not a pcap or pcapng capture (the file is empty)")
            }
            Self::NotACapture { first_bytes } => {
                write!(f, "not a pcap or pcapng capture (it starts with")?;
                for b in first_bytes {
                    write!(f, " {b:02x}")?;
                }
                write!(f, ")")
            }
            Self::UnsupportedLinkType(link) => write!(
                f,
                "unsupported link type {} ({link:?}): only Ethernet (1) captures can be decoded",
                u32::from(*link)
            ),
            Self::Malformed { format, error } => {
                let name = match format {
                    Format::Pcap => "pcap",
                    Format::PcapNg => "pcapng",
                };
                match error {
                    // pcap-file reports a file cut short as a failed read; say what it means.
                    PcapError::IncompleteBuffer => {
                        write!(f, "the {name} file ends in the middle of a record")
                    }
                    PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        write!(f, "the {name} file ends in the middle of a record")
                    }
                    PcapError::IoError(e) => write!(f, "cannot read the {name} file: {e}"),
                    error => write!(f, "malformed {name} capture: {error}"),
                }
            }
        }
    }
}

// The inner error is part of the message, so it is not also reported as the source.
impl std::error::Error for CaptureError {}

impl From<io::Error> for CaptureError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Time since the Unix epoch; `None` where the format stores none (pcapng simple packets).
    pub ts: Option<Duration>,
    /// Fraction digits the capture's clock resolution justifies (6 for microseconds).
    pub ts_digits: u8,
    /// Link-layer type of the interface the packet was captured on.
    pub link: DataLink,
    /// Length of the packet on the wire; more than `data.len()` when the capture cut it short.
    pub orig_len: u32,
    /// The captured bytes, starting with the link-layer header.
    pub data: Vec<u8>,
}

/// Reads packets from a pcap or pcapng stream.
pub enum CaptureReader<R: BufRead> {
    Pcap {
        reader: PcapReader<R>,
        link: DataLink,
        ts_digits: u8,
    },
    PcapNg(PcapNgReader<R>),
}

impl<R: BufRead> fmt::Debug for CaptureReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("format", &self.format())
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> CaptureReader<R> {
    /// Detects the format from the magic number and reads the file header.
    ///
    /// # Errors
    /// [`CaptureError::NotACapture`] for anything but pcap or pcapng,
    /// [`CaptureError::UnsupportedLinkType`] for a pcap of another link type than Ethernet,
    /// [`CaptureError::Malformed`] or [`CaptureError::Io`] when the header cannot be read.
    pub fn new(mut input: R) -> Result<Self, CaptureError> {
        let first_bytes = peek(&mut input, 4)?;
        let format = Format::detect(&first_bytes).ok_or(CaptureError::NotACapture {
            first_bytes: first_bytes.clone(),
        })?;
        let malformed = |error| CaptureError::Malformed { format, error };
        match format {
            Format::Pcap => {
                let reader = PcapReader::new(input).map_err(malformed)?;
                let header = reader.header();
                if header.datalink != DataLink::ETHERNET {
                    return Err(CaptureError::UnsupportedLinkType(header.datalink));
                }
                let ts_digits = match header.ts_resolution {
                    TsResolution::MicroSecond => 6,
                    TsResolution::NanoSecond => 9,
                };
                Ok(Self::Pcap {
                    reader,
                    link: header.datalink,
                    ts_digits,
                })
            }
            Format::PcapNg => Ok(Self::PcapNg(PcapNgReader::new(input).map_err(malformed)?)),
        }
    }

    /// The format of the file.
    pub fn format(&self) -> Format {
        match self {
            Self::Pcap { .. } => Format::Pcap,
            Self::PcapNg(_) => Format::PcapNg,
        }
    }

    /// The next packet, skipping pcapng blocks that carry none.
    ///
    /// # Errors
    /// [`CaptureError::Malformed`] when a record cannot be parsed (a file cut short in the
    /// middle of a packet, for instance); reading should stop there.
    pub fn next_packet(&mut self) -> Option<Result<Packet, CaptureError>> {
        match self {
            Self::Pcap {
                reader,
                link,
                ts_digits,
            } => {
                let packet = match reader.next_packet()? {
                    Ok(p) => p,
                    Err(error) => {
                        return Some(Err(CaptureError::Malformed {
                            format: Format::Pcap,
                            error,
                        }));
                    }
                };
                Some(Ok(Packet {
                    ts: Some(packet.timestamp),
                    ts_digits: *ts_digits,
                    link: *link,
                    orig_len: packet.orig_len,
                    data: packet.data.into_owned(),
                }))
            }
            Self::PcapNg(reader) => next_pcapng_packet(reader),
        }
    }
}

/// Looks at the first `n` bytes of `input` without consuming them (fewer at end of file).
fn peek<R: BufRead>(input: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let buf = input.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

/// What a pcapng packet block says before its interface is looked up.
struct RawNgPacket {
    interface: u32,
    /// Timestamp in the interface's units (`None` for simple packets).
    units: Option<u64>,
    orig_len: u32,
    data: Vec<u8>,
}

fn next_pcapng_packet<R: BufRead>(
    reader: &mut PcapNgReader<R>,
) -> Option<Result<Packet, CaptureError>> {
    loop {
        let raw = match reader.next_block()? {
            Err(error) => {
                return Some(Err(CaptureError::Malformed {
                    format: Format::PcapNg,
                    error,
                }));
            }
            // pcap-file stores the raw 64-bit timestamp as if it counted nanoseconds, whatever
            // the interface's resolution; `units` undoes that and `timestamp` applies it.
            Ok(Block::EnhancedPacket(b)) => RawNgPacket {
                interface: b.interface_id,
                units: Some(u64::try_from(b.timestamp.as_nanos()).unwrap_or(u64::MAX)),
                orig_len: b.original_len,
                data: b.data.into_owned(),
            },
            Ok(Block::Packet(b)) => RawNgPacket {
                interface: b.interface_id.into(),
                units: Some(b.timestamp),
                orig_len: b.original_len,
                data: b.data.into_owned(),
            },
            // A simple packet belongs to the first interface and has no timestamp.
            Ok(Block::SimplePacket(b)) => RawNgPacket {
                interface: 0,
                units: None,
                orig_len: b.original_len,
                data: b.data.into_owned(),
            },
            Ok(_) => continue,
        };
        let Some(interface) = reader.interfaces().get(raw.interface as usize) else {
            return Some(Err(CaptureError::Malformed {
                format: Format::PcapNg,
                error: PcapError::InvalidInterfaceId(raw.interface),
            }));
        };
        let resolution = ts_resolution(interface);
        return Some(Ok(Packet {
            ts: raw.units.map(|u| resolution.timestamp(u)),
            ts_digits: resolution.digits(),
            link: interface.linktype,
            orig_len: raw.orig_len,
            data: raw.data,
        }));
    }
}

/// The `if_tsresol` option of a pcapng interface: units of 10^-n or 2^-n seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Decimal(u8),
    Binary(u8),
}

/// The interface's timestamp resolution; microseconds when the option is absent (pcapng spec).
fn ts_resolution(interface: &InterfaceDescriptionBlock<'_>) -> Resolution {
    interface
        .options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(v) => Some(Resolution::from_option(*v)),
            _ => None,
        })
        .unwrap_or(Resolution::Decimal(6))
}

impl Resolution {
    /// Decodes the option byte: the high bit selects a power of two, the rest is the exponent.
    pub fn from_option(v: u8) -> Self {
        if v & 0x80 == 0 {
            Self::Decimal(v)
        } else {
            Self::Binary(v & 0x7f)
        }
    }

    /// Converts a timestamp in these units to a duration since the epoch.
    pub fn timestamp(self, units: u64) -> Duration {
        let per_second: u128 = match self {
            Self::Decimal(n) => 10u128.checked_pow(n.into()).unwrap_or(u128::MAX),
            Self::Binary(n) => 1u128.checked_shl(n.into()).unwrap_or(u128::MAX),
        };
        let units = u128::from(units);
        let secs = units / per_second;
        let nanos = (units % per_second) * 1_000_000_000 / per_second;
        Duration::new(
            u64::try_from(secs).unwrap_or(u64::MAX),
            u32::try_from(nanos).expect("below one second"),
        )
    }

    /// Fraction digits worth printing: as many as the resolution has, at most nanoseconds.
    pub fn digits(self) -> u8 {
        match self {
            Self::Decimal(n) => n.min(9),
            Self::Binary(_) => 9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_formats_in_both_byte_orders() {
        assert_eq!(
            Format::detect(&[0xd4, 0xc3, 0xb2, 0xa1]),
            Some(Format::Pcap)
        );
        assert_eq!(
            Format::detect(&[0xa1, 0xb2, 0x3c, 0x4d]),
            Some(Format::Pcap)
        );
        assert_eq!(
            Format::detect(&[0x0a, 0x0d, 0x0d, 0x0a]),
            Some(Format::PcapNg)
        );
        assert_eq!(Format::detect(b"GET /"), None);
        assert_eq!(Format::detect(&[0xd4, 0xc3]), None);
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        // Default: microseconds.
        let us = Resolution::from_option(6);
        assert_eq!(us.timestamp(1_500_001), Duration::new(1, 500_001_000));
        assert_eq!(us.digits(), 6);
        let ns = Resolution::from_option(9);
        assert_eq!(ns.timestamp(2_000_000_007), Duration::new(2, 7));
        // 2^-10 seconds: 1536 units is 1.5 s.
        let binary = Resolution::from_option(0x80 | 10);
        assert_eq!(binary, Resolution::Binary(10));
        assert_eq!(binary.timestamp(1536), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_text_with_a_message_that_shows_its_first_bytes() {
        let err = CaptureReader::new(&b"hello world"[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng capture (it starts with 68 65 6c 6c)"
        );
        let err = CaptureReader::new(&b""[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng capture (the file is empty)"
        );
    }

    #[test]
    fn a_file_cut_inside_a_record_says_so() {
        let mut file = Vec::new();
        let mut w = pcap_file::pcap::PcapWriter::new(&mut file).unwrap();
        let packet = pcap_file::pcap::PcapPacket::new(Duration::ZERO, 62, &[0u8; 62]);
        w.write_packet(&packet).unwrap();
        let cut = &file[..file.len() - 10];
        let mut reader = CaptureReader::new(cut).unwrap();
        let err = reader.next_packet().unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the pcap file ends in the middle of a record"
        );
    }

    #[test]
    fn refuses_a_pcap_of_another_link_type() {
        let mut file = Vec::new();
        let header = pcap_file::pcap::PcapHeader {
            datalink: DataLink::RAW,
            ..Default::default()
        };
        pcap_file::pcap::PcapWriter::with_header(&mut file, header).unwrap();
        let err = CaptureReader::new(&file[..]).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::UnsupportedLinkType(DataLink::RAW)
        ));
        assert!(err.to_string().contains("only Ethernet (1)"), "{err}");
    }
}
