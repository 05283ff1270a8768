//! The one error type of the codec.

use crate::tilelink::{Channel, Op};

/// Everything that can go wrong while parsing or emitting OmniXtend frames.
///
/// Variants documented "peer" mean the bytes came from the network and are malformed; variants
/// documented "caller" mean a [`Message`](crate::Message) or buffer handed to an emit function is
/// not valid. Parsing never panics: every malformed input maps to one of these.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Peer: the input ends before a field that must be present.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// Peer: the Ethernet frame carries another protocol.
    #[error("wrong EtherType {0:#06x}")]
    WrongEtherType(u16),
    /// Peer: a TLoE frame must be a whole number of 64-bit flits.
    #[error("TLoE frame of {0} bytes is not a whole number of 8-byte flits")]
    NotFlitAligned(usize),
    /// Peer: the TLoE header uses a message type that no variant defines (1.1 defines 0 to 3).
    #[error("reserved TLoE message type {0}")]
    ReservedMessageType(u8),
    /// Peer: the TLoE header returns credit on channel 6 or 7.
    #[error("reserved credit channel {0}")]
    ReservedCreditChannel(u8),
    /// Peer: a message header names channel 6 or 7.
    #[error("reserved TileLink channel {channel} at flit {flit}")]
    ReservedChannel { channel: u8, flit: usize },
    /// Peer: the frame mask marks a flit that holds padding (channel 0).
    #[error("frame mask marks padding at flit {flit} as a message")]
    PaddingMarkedAsMessage { flit: usize },
    /// Peer: the opcode is not defined on that channel.
    #[error("opcode {opcode} is not defined on channel {channel:?}")]
    UnknownOpcode { channel: Channel, opcode: u8 },
    /// Peer or caller: the param is outside the range the opcode defines.
    #[error("param {param} is not valid for {op:?}")]
    InvalidParam { op: Op, param: u8 },
    /// Peer: the frame mask marks a message start at or after the frame mask itself.
    #[error("frame mask marks flit {flit}, past the last message flit {last}")]
    MaskPastEnd { flit: usize, last: usize },
    /// Peer: the frame mask marks a message start inside the previous message.
    #[error(
        "frame mask marks flit {flit} inside the previous message, which ends at flit {previous_end}"
    )]
    MaskOverlap { flit: usize, previous_end: usize },
    /// Peer: a message's flits (header, mask and data) run past the frame mask.
    #[error(
        "message at flit {flit} needs {flits} flits but only {available} remain before the mask"
    )]
    DataOverrun {
        flit: usize,
        flits: usize,
        available: usize,
    },
    /// Caller: TileLink sizes are log2 of the byte count and at most 15 (32 KiB).
    #[error("size 2^{0} is above the TileLink maximum of 2^15")]
    SizeTooLarge(u8),
    /// Peer or caller: TileLink addresses are aligned to the message size.
    #[error("address {address:#x} is not aligned to 2^{size}")]
    UnalignedAddress { address: u64, size: u8 },
    /// Caller: the payload length does not match the message size.
    #[error("payload of {got} bytes where {op:?} of size 2^{size} needs {expected}")]
    PayloadLength {
        op: Op,
        size: u8,
        expected: usize,
        got: usize,
    },
    /// Caller: a field value does not fit its bits on the wire.
    #[error("{field} value {value:#x} does not fit its wire field")]
    FieldOutOfRange { field: &'static str, value: u64 },
    /// Caller: the output buffer is too small.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
