//! Whole TLoE frames: header, packed messages, padding and the frame mask (spec §3).

use crate::error::{Error, Result};
use crate::ethernet::{self, EthernetFrame, EthernetRepr};
use crate::tilelink::{ByteOrder, FLIT, Message};
use crate::tloe::{self, TloeHeader, TloeHeaderRepr};

/// The part of an Ethernet frame after the MAC header must be at least 46 bytes (spec §3.3);
/// with whole flits that is 48 bytes: header, four flits, mask.
pub const MIN_ETHERNET_PAYLOAD: usize = 46;
/// At most 64 messages per frame: one mask bit each.
pub const MAX_MESSAGES: usize = 64;
/// The smallest TLoE frame: header and mask.
pub const MIN_TLOE_LEN: usize = 2 * FLIT;

/// Rounds `min` up to whole flits.
pub const fn padded_len(content: usize, min: usize) -> usize {
    let len = if content > min { content } else { min };
    len.div_ceil(FLIT) * FLIT
}

/// The 64-bit frame mask: bit `i` set means a message starts at flit `i + 1` after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameMask(pub u64);

impl FrameMask {
    /// Flit indexes (1-based, counting the TLoE header as flit 0) where messages start.
    pub fn starts(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i + 1)
        })
    }

    /// Number of messages the mask marks.
    pub const fn count(self) -> usize {
        self.0.count_ones() as usize
    }
}

/// A zero-copy view of a TLoE frame (everything after the Ethernet header, or a UDP payload).
#[derive(Debug, Clone, Copy)]
pub struct TloeFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TloeFrame<T> {
    /// Wraps untrusted bytes: at least a header and a mask, in whole flits.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::NotFlitAligned`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < MIN_TLOE_LEN {
            return Err(Error::Truncated {
                needed: MIN_TLOE_LEN,
                available: len,
            });
        }
        if len % FLIT != 0 {
            return Err(Error::NotFlitAligned(len));
        }
        Ok(Self { buffer })
    }

    /// The bytes of the frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Number of flits, header and mask included.
    pub fn flits(&self) -> usize {
        self.buffer.as_ref().len() / FLIT
    }

    /// The TLoE header.
    pub fn header(&self) -> TloeHeader<&[u8]> {
        TloeHeader::new_unchecked(&self.buffer.as_ref()[..tloe::HEADER_LEN])
    }

    /// The frame mask (last flit).
    pub fn mask(&self) -> FrameMask {
        let b = self.buffer.as_ref();
        FrameMask(u64::from_be_bytes(
            b[b.len() - FLIT..].try_into().expect("checked"),
        ))
    }

    /// Walks the messages the mask marks, in order, without allocating. The iterator yields
    /// an error and then stops at the first inconsistency.
    pub fn messages(&self, order: ByteOrder) -> Messages<'_> {
        Messages::new(self.buffer.as_ref(), order)
    }
}

/// Iterator over the messages of a [`TloeFrame`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    bytes: &'a [u8],
    mask: u64,
    /// First flit not yet covered by a message.
    cursor: usize,
    order: ByteOrder,
    done: bool,
}

impl<'a> Messages<'a> {
    /// `bytes` must be a checked TLoE frame.
    fn new(bytes: &'a [u8], order: ByteOrder) -> Self {
        let mask = u64::from_be_bytes(bytes[bytes.len() - FLIT..].try_into().expect("checked"));
        Messages {
            bytes,
            mask,
            cursor: 1,
            order,
            done: false,
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.mask == 0 {
            return None;
        }
        let flit = self.mask.trailing_zeros() as usize + 1;
        self.mask &= self.mask - 1;
        let last = self.bytes.len() / FLIT - 1; // the mask flit
        let result = if flit >= last {
            Err(Error::MaskPastEnd {
                flit,
                last: last - 1,
            })
        } else if flit < self.cursor {
            Err(Error::MaskOverlap {
                flit,
                previous_end: self.cursor - 1,
            })
        } else {
            let area = &self.bytes[flit * FLIT..last * FLIT];
            match Message::parse_at(area, self.order, flit) {
                Ok(msg) => {
                    self.cursor = flit + msg.flits();
                    Ok(msg)
                }
                Err(Error::Truncated { needed, available }) => Err(Error::DataOverrun {
                    flit,
                    flits: needed.div_ceil(FLIT),
                    available: available / FLIT,
                }),
                Err(e) => Err(e),
            }
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

/// Checks an Ethernet frame's EtherType and returns its header and TLoE frame.
///
/// # Errors
/// [`Error::Truncated`], [`Error::WrongEtherType`] or [`Error::NotFlitAligned`].
pub fn parse_ethernet(bytes: &[u8], ethertype: u16) -> Result<(EthernetRepr, TloeFrame<&[u8]>)> {
    let eth = EthernetFrame::new_checked(bytes)?;
    let repr = EthernetRepr::parse(&eth);
    if repr.ethertype != ethertype {
        return Err(Error::WrongEtherType(repr.ethertype));
    }
    Ok((
        repr,
        TloeFrame::new_checked(&bytes[ethernet::HEADER_LEN..])?,
    ))
}

/// Why [`FrameBuilder::push`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The frame has no room left for this message (size limit, 64 messages, or the previous
    /// message reaches past flit 64 so nothing can follow it); start another frame.
    #[error("frame full")]
    Full,
    /// The message itself is invalid.
    #[error(transparent)]
    Invalid(#[from] Error),
}

/// Packs messages into one TLoE frame in a caller's buffer.
///
/// Messages are written back to back from flit 1; [`FrameBuilder::finish`] writes the header,
/// pads to the minimum length and writes the mask. Nothing is allocated.
#[derive(Debug)]
pub struct FrameBuilder<'b> {
    buf: &'b mut [u8],
    /// Bytes written, header included.
    cursor: usize,
    mask: u64,
    count: usize,
    order: ByteOrder,
}

impl<'b> FrameBuilder<'b> {
    /// Starts a frame of at most `max_len` bytes (also bounded by `buf`).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when there is no room for a header and a mask.
    pub fn new(buf: &'b mut [u8], max_len: usize, order: ByteOrder) -> Result<Self> {
        let limit = max_len.min(buf.len()) / FLIT * FLIT;
        if limit < MIN_TLOE_LEN {
            return Err(Error::BufferTooSmall {
                needed: MIN_TLOE_LEN,
                available: limit,
            });
        }
        Ok(Self {
            buf: &mut buf[..limit],
            cursor: tloe::HEADER_LEN,
            mask: 0,
            count: 0,
            order,
        })
    }

    /// Number of messages packed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no message has been packed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Flits still free for messages.
    pub fn free_flits(&self) -> usize {
        (self.buf.len() - self.cursor - FLIT) / FLIT
    }

    /// Whether a message of `flits` flits would fit.
    pub fn fits(&self, flits: usize) -> bool {
        let start = self.cursor / FLIT;
        self.count < MAX_MESSAGES && start <= MAX_MESSAGES && flits <= self.free_flits()
    }

    /// Appends a message.
    ///
    /// # Errors
    /// [`PushError::Full`] when it does not fit, [`PushError::Invalid`] when it is not valid.
    pub fn push(&mut self, msg: &Message<'_>) -> Result<(), PushError> {
        msg.check()?;
        if !self.fits(msg.flits()) {
            return Err(PushError::Full);
        }
        let start = self.cursor / FLIT;
        let end = self.buf.len() - FLIT;
        let n = msg.emit(&mut self.buf[self.cursor..end], self.order)?;
        self.mask |= 1 << (start - 1);
        self.cursor += n;
        self.count += 1;
        Ok(())
    }

    /// Appends a message already encoded by [`Message::emit`] in this builder's byte order
    /// (`bytes.len()` is its flits × 8). The bytes are trusted: they are not re-validated.
    ///
    /// # Errors
    /// [`PushError::Full`] when it does not fit.
    pub fn push_encoded(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        debug_assert!(bytes.len() % FLIT == 0 && !bytes.is_empty());
        if !self.fits(bytes.len() / FLIT) {
            return Err(PushError::Full);
        }
        let start = self.cursor / FLIT;
        self.buf[self.cursor..self.cursor + bytes.len()].copy_from_slice(bytes);
        self.mask |= 1 << (start - 1);
        self.cursor += bytes.len();
        self.count += 1;
        Ok(())
    }

    /// Writes the header, zero padding up to `min_len` and the mask; returns the frame length.
    ///
    /// Use [`MIN_ETHERNET_PAYLOAD`] on raw Ethernet and 0 where no minimum applies (UDP).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when `min_len` exceeds the frame limit, or a header field error.
    pub fn finish(self, header: &TloeHeaderRepr, min_len: usize) -> Result<usize> {
        let len = padded_len(self.cursor + FLIT, min_len);
        if len > self.buf.len() {
            return Err(Error::BufferTooSmall {
                needed: len,
                available: self.buf.len(),
            });
        }
        header.emit(self.buf)?;
        self.buf[self.cursor..len - FLIT].fill(0);
        self.buf[len - FLIT..len].copy_from_slice(&self.mask.to_be_bytes());
        Ok(len)
    }
}

/// A whole TLoE frame, parsed. Allocates a `Vec` for the messages: for tools and tests; the
/// data path walks [`TloeFrame::messages`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRepr<'a> {
    pub header: TloeHeaderRepr,
    pub messages: Vec<Message<'a>>,
}

impl<'a> FrameRepr<'a> {
    /// Parses a checked frame.
    ///
    /// # Errors
    /// The first header or message error.
    pub fn parse(frame: &TloeFrame<&'a [u8]>, order: ByteOrder) -> Result<Self> {
        let header = TloeHeaderRepr::parse(&frame.header())?;
        let messages = Messages::new(frame.buffer, order).collect::<Result<Vec<_>>>()?;
        Ok(Self { header, messages })
    }

    /// Bytes the frame takes when packed back to back and padded to `min_len`.
    pub fn buffer_len(&self, min_len: usize) -> usize {
        let content: usize = self.messages.iter().map(Message::buffer_len).sum();
        padded_len(content + MIN_TLOE_LEN, min_len)
    }

    /// Packs the frame into `buf`; returns its length.
    ///
    /// # Errors
    /// A message error, [`Error::BufferTooSmall`] when the messages do not fit in one frame.
    pub fn emit(&self, buf: &mut [u8], min_len: usize, order: ByteOrder) -> Result<usize> {
        let needed = self.buffer_len(min_len);
        let available = buf.len();
        let mut builder = FrameBuilder::new(buf, usize::MAX, order)?;
        for msg in &self.messages {
            builder.push(msg).map_err(|e| match e {
                PushError::Full => Error::BufferTooSmall { needed, available },
                PushError::Invalid(e) => e,
            })?;
        }
        builder.finish(&self.header, min_len)
    }
}
