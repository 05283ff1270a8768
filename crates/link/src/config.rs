//! Connection parameters.

use core::time::Duration;

use oxmem_wire::ByteOrder;

/// How frames are protected against corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Integrity {
    /// Nothing added: on raw Ethernet the NIC checks the FCS and drops corrupted frames, and
    /// frames must stay byte-compatible with other OmniXtend implementations.
    #[default]
    None,
    /// A CRC-32 (the polynomial of the Ethernet FCS) of the TLoE frame, appended as 4 bytes,
    /// big-endian. For encapsulations without a reliable checksum, such as UDP.
    Crc32,
}

impl Integrity {
    /// Bytes the check adds after the TLoE frame.
    pub const fn trailer_len(self) -> usize {
        match self {
            Integrity::None => 0,
            Integrity::Crc32 => 4,
        }
    }
}

/// Parameters of one [`Connection`](crate::Connection).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest TLoE frame to send (bytes after the Ethernet header, integrity trailer not
    /// included). 1486 fits a 1500-byte Ethernet MTU with its 14-byte header; ETRI's endpoint
    /// takes no more than about 528.
    pub max_frame: usize,
    /// Pad frames to at least this many bytes: 46 on raw Ethernet, 0 over UDP.
    pub min_frame: usize,
    /// Data byte order inside flits.
    pub byte_order: ByteOrder,
    /// Integrity check added to frames.
    pub integrity: Integrity,
    /// Resend every unacknowledged frame when no acknowledgement came for this long (the spec
    /// suggests twice the round-trip time).
    pub retransmit_timeout: Duration,
    /// Longest an acknowledgement waits for a reverse frame to ride on (spec: up to RTT/4).
    pub ack_delay: Duration,
    /// Declare the peer dead when unacknowledged frames see no progress for this long.
    pub dead_after: Duration,
    /// Receive buffer per channel A..E, in flits: the credit this side hands out.
    pub rx_buffer_flits: [u32; 5],
    /// Most sequenced frames kept for retransmission (the spec's retransmit buffer).
    pub max_in_flight: usize,
    /// Most bytes of messages queued by [`send`](crate::Connection::send) and not yet framed.
    pub send_queue_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: 1486,
            min_frame: oxmem_wire::MIN_ETHERNET_PAYLOAD,
            byte_order: ByteOrder::Spec,
            integrity: Integrity::None,
            retransmit_timeout: Duration::from_millis(20),
            ack_delay: Duration::from_micros(50),
            dead_after: Duration::from_secs(3),
            rx_buffer_flits: [1 << 14; 5],
            max_in_flight: 256,
            send_queue_bytes: 4 << 20,
        }
    }
}

impl Config {
    /// Settings for the UDP encapsulation: no padding, CRC-32 trailer, datagrams up to `max_frame`.
    pub fn udp(max_frame: usize) -> Self {
        Config {
            max_frame,
            min_frame: 0,
            integrity: Integrity::Crc32,
            ..Config::default()
        }
    }
}
