//! The TLoE frame header: one flit at the start of every OmniXtend frame (spec §3.2).

use crate::error::{Error, Result};
use crate::tilelink::Channel;

/// Length of the TLoE header.
pub const HEADER_LEN: usize = 8;

/// Sequence numbers are 22 bits wide (spec §3.2).
pub const SEQ_BITS: u32 = 22;
/// Mask of a 22-bit sequence number.
pub const SEQ_MASK: u32 = (1 << SEQ_BITS) - 1;

/// Which form of the TLoE header a peer speaks.
///
/// 1.0.3 keeps bits 60:54 reserved and has no connection messages. The "1.1" form that every
/// public implementation uses carries a message type in bits 60:57 and opens and closes
/// connections explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderVariant {
    V1_0_3,
    V1_1,
}

/// The message type of a "1.1" TLoE header (bits 60:57). 1.0.3 frames are always `Normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// A frame that carries TileLink messages (or none) and takes a sequence number.
    Normal = 0,
    /// A frame that only acknowledges; it is never itself acknowledged.
    AckOnly = 1,
    /// Opens a connection (1.1 only).
    Open = 2,
    /// Closes a connection (1.1 only).
    Close = 3,
}

impl FrameType {
    /// Decodes bits 60:57.
    ///
    /// # Errors
    /// [`Error::ReservedMessageType`] for values above 3.
    pub const fn from_bits(bits: u8) -> Result<Self> {
        Ok(match bits {
            0 => Self::Normal,
            1 => Self::AckOnly,
            2 => Self::Open,
            3 => Self::Close,
            other => return Err(Error::ReservedMessageType(other)),
        })
    }
}

/// Credit returned by one frame: `2^exponent` flits on one channel (spec §3.2, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CreditGrant {
    pub channel: Channel,
    /// log2 of the number of flits returned (0..=31).
    pub exponent: u8,
}

impl CreditGrant {
    /// Number of flits this grant returns.
    /// Parsed grants have exponents up to 31; a larger one saturates rather than overflows.
    pub const fn flits(&self) -> u64 {
        if self.exponent < 64 {
            1u64 << self.exponent
        } else {
            u64::MAX
        }
    }
}

mod field {
    pub const VC_SHIFT: u32 = 61;
    pub const TYPE_SHIFT: u32 = 57;
    pub const SEQ_SHIFT: u32 = 32;
    pub const SEQ_ACK_SHIFT: u32 = 10;
    pub const ACK_BIT: u32 = 9;
    pub const CREDIT_CHAN_SHIFT: u32 = 5;
}

/// A zero-copy view of a TLoE header.
#[derive(Debug, Clone, Copy)]
pub struct TloeHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TloeHeader<T> {
    /// Wraps a buffer without checking; accessors panic on fewer than 8 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes: after this succeeds no accessor can panic.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the buffer is shorter than one flit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN,
                available: len,
            });
        }
        Ok(Self { buffer })
    }

    /// The header as the 64-bit big-endian word it is on the wire.
    pub fn raw(&self) -> u64 {
        let b = self.buffer.as_ref();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Virtual channel, bits 63:61.
    pub fn vc(&self) -> u8 {
        (self.raw() >> field::VC_SHIFT) as u8 & 0x7
    }
    /// Message type bits 60:57 (reserved, zero, in 1.0.3).
    pub fn frame_type_bits(&self) -> u8 {
        (self.raw() >> field::TYPE_SHIFT) as u8 & 0xf
    }
    /// Sequence number, bits 53:32.
    pub fn seq(&self) -> u32 {
        (self.raw() >> field::SEQ_SHIFT) as u32 & SEQ_MASK
    }
    /// Sequence number acknowledged, bits 31:10.
    pub fn seq_ack(&self) -> u32 {
        (self.raw() >> field::SEQ_ACK_SHIFT) as u32 & SEQ_MASK
    }
    /// Bit 9: 1 = ACK, 0 = NAK.
    pub fn ack(&self) -> bool {
        self.raw() >> field::ACK_BIT & 1 == 1
    }
    /// Credit channel, bits 7:5 (0 = none).
    pub fn credit_channel_bits(&self) -> u8 {
        (self.raw() >> field::CREDIT_CHAN_SHIFT) as u8 & 0x7
    }
    /// Credit exponent, bits 4:0.
    pub fn credit_bits(&self) -> u8 {
        self.raw() as u8 & 0x1f
    }
}

/// The parsed TLoE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TloeHeaderRepr {
    pub vc: u8,
    pub frame_type: FrameType,
    pub seq: u32,
    pub seq_ack: u32,
    /// `true` = ACK, `false` = NAK.
    pub ack: bool,
    pub credit: Option<CreditGrant>,
}

impl TloeHeaderRepr {
    /// Parses a checked header. Reserved bits (56:54 and 8) are ignored.
    ///
    /// # Errors
    /// [`Error::ReservedMessageType`] or [`Error::ReservedCreditChannel`].
    pub fn parse<T: AsRef<[u8]>>(header: &TloeHeader<T>) -> Result<Self> {
        let frame_type = FrameType::from_bits(header.frame_type_bits())?;
        let chan = header.credit_channel_bits();
        let credit = match chan {
            0 => None,
            1..=5 => Some(CreditGrant {
                channel: Channel::from_bits(chan).expect("1..=5 are channels"),
                exponent: header.credit_bits(),
            }),
            other => return Err(Error::ReservedCreditChannel(other)),
        };
        Ok(Self {
            vc: header.vc(),
            frame_type,
            seq: header.seq(),
            seq_ack: header.seq_ack(),
            ack: header.ack(),
            credit,
        })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// The header as a 64-bit word.
    ///
    /// # Errors
    /// [`Error::FieldOutOfRange`] when a field does not fit its bits.
    pub fn to_bits(&self) -> Result<u64> {
        if self.vc > 7 {
            return Err(Error::FieldOutOfRange {
                field: "vc",
                value: self.vc.into(),
            });
        }
        if self.seq > SEQ_MASK {
            return Err(Error::FieldOutOfRange {
                field: "seq",
                value: self.seq.into(),
            });
        }
        if self.seq_ack > SEQ_MASK {
            return Err(Error::FieldOutOfRange {
                field: "seq_ack",
                value: self.seq_ack.into(),
            });
        }
        let (chan, credit) = match self.credit {
            None => (0u64, 0u64),
            Some(c) if c.exponent < 32 => (c.channel as u64, c.exponent.into()),
            Some(c) => {
                return Err(Error::FieldOutOfRange {
                    field: "credit",
                    value: c.exponent.into(),
                });
            }
        };
        Ok(u64::from(self.vc) << field::VC_SHIFT
            | (self.frame_type as u64) << field::TYPE_SHIFT
            | u64::from(self.seq) << field::SEQ_SHIFT
            | u64::from(self.seq_ack) << field::SEQ_ACK_SHIFT
            | u64::from(self.ack) << field::ACK_BIT
            | chan << field::CREDIT_CHAN_SHIFT
            | credit)
    }

    /// Writes the header into the first 8 bytes of `buf`.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] or [`Error::FieldOutOfRange`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let bits = self.to_bits()?;
        let available = buf.len();
        let out = buf.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall {
            needed: HEADER_LEN,
            available,
        })?;
        out.copy_from_slice(&bits.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_header_fields() {
        // Appendix A.1.1: seq 0x2E50D, seq_ack 0x56D4B, ACK, 2^8 credits on channel B.
        let bytes = [0x00, 0x02, 0xe5, 0x0d, 0x15, 0xb5, 0x2e, 0x48];
        let repr = TloeHeaderRepr::parse(&TloeHeader::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.seq, 0x2e50d);
        assert_eq!(repr.seq_ack, 0x56d4b);
        assert!(repr.ack);
        assert_eq!(repr.frame_type, FrameType::Normal);
        assert_eq!(
            repr.credit,
            Some(CreditGrant {
                channel: Channel::B,
                exponent: 8
            })
        );
        let mut out = [0u8; 8];
        repr.emit(&mut out).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn reserved_fields_are_typed_errors() {
        let mut bytes = [0u8; 8];
        bytes[7] = 0b110_00000; // credit channel 6
        let h = TloeHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            TloeHeaderRepr::parse(&h),
            Err(Error::ReservedCreditChannel(6))
        );
        let mut bytes = [0u8; 8];
        bytes[0] = 0b0000_1000; // type 4
        let h = TloeHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            TloeHeaderRepr::parse(&h),
            Err(Error::ReservedMessageType(4))
        );
    }

    #[test]
    fn out_of_range_fields_are_refused_on_emit() {
        let repr = TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::Normal,
            seq: 1 << 22,
            seq_ack: 0,
            ack: true,
            credit: None,
        };
        assert!(matches!(
            repr.emit(&mut [0; 8]),
            Err(Error::FieldOutOfRange { field: "seq", .. })
        ));
    }
}
