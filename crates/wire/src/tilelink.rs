//! TileLink messages as OmniXtend carries them (spec §3.3, TileLink 1.8.0 chapters 4 to 9).

use core::fmt;

use crate::error::{Error, Result};

/// The largest TileLink size exponent: 2^15 = 32 KiB.
pub const MAX_SIZE: u8 = 15;
/// Largest value of the 26-bit source and sink fields.
pub const MAX_SOURCE: u32 = (1 << 26) - 1;
/// Bytes in one flit (and one data beat: OmniXtend's data bus is 8 bytes wide).
pub const FLIT: usize = 8;

/// A TileLink channel. The discriminant is its code in message headers and credit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    A = 1,
    B = 2,
    C = 3,
    D = 4,
    E = 5,
}

impl Channel {
    /// All five channels in order.
    pub const ALL: [Channel; 5] = [Channel::A, Channel::B, Channel::C, Channel::D, Channel::E];

    /// Decodes a 3-bit channel code; 0 (padding), 6 and 7 (reserved) are not channels.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            1 => Self::A,
            2 => Self::B,
            3 => Self::C,
            4 => Self::D,
            5 => Self::E,
            _ => return None,
        })
    }

    /// 0 for A up to 4 for E, to index per-channel arrays.
    pub const fn index(self) -> usize {
        self as usize - 1
    }
}

/// A TileLink operation. Which channels carry which operation is fixed by the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutFullData,
    PutPartialData,
    ArithmeticData,
    LogicalData,
    Get,
    Intent,
    AcquireBlock,
    AcquirePerm,
    ProbeBlock,
    ProbePerm,
    AccessAck,
    AccessAckData,
    HintAck,
    ProbeAck,
    ProbeAckData,
    Release,
    ReleaseData,
    Grant,
    GrantData,
    ReleaseAck,
    GrantAck,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 21] = [
        Op::PutFullData,
        Op::PutPartialData,
        Op::ArithmeticData,
        Op::LogicalData,
        Op::Get,
        Op::Intent,
        Op::AcquireBlock,
        Op::AcquirePerm,
        Op::ProbeBlock,
        Op::ProbePerm,
        Op::AccessAck,
        Op::AccessAckData,
        Op::HintAck,
        Op::ProbeAck,
        Op::ProbeAckData,
        Op::Release,
        Op::ReleaseData,
        Op::Grant,
        Op::GrantData,
        Op::ReleaseAck,
        Op::GrantAck,
    ];

    /// The 3-bit opcode of this operation.
    pub const fn opcode(self) -> u8 {
        match self {
            Op::PutFullData | Op::AccessAck | Op::GrantAck => 0,
            Op::PutPartialData | Op::AccessAckData => 1,
            Op::ArithmeticData | Op::HintAck => 2,
            Op::LogicalData => 3,
            Op::Get | Op::ProbeAck | Op::Grant => 4,
            Op::Intent | Op::ProbeAckData | Op::GrantData => 5,
            Op::AcquireBlock | Op::ProbeBlock | Op::Release | Op::ReleaseAck => 6,
            Op::AcquirePerm | Op::ProbePerm | Op::ReleaseData => 7,
        }
    }

    /// Decodes an opcode on a channel.
    ///
    /// # Errors
    /// [`Error::UnknownOpcode`] for opcodes the channel does not define.
    pub const fn decode(channel: Channel, opcode: u8) -> Result<Op> {
        Ok(match (channel, opcode) {
            (Channel::A | Channel::B, 0) => Op::PutFullData,
            (Channel::A | Channel::B, 1) => Op::PutPartialData,
            (Channel::A | Channel::B, 2) => Op::ArithmeticData,
            (Channel::A | Channel::B, 3) => Op::LogicalData,
            (Channel::A | Channel::B, 4) => Op::Get,
            (Channel::A | Channel::B, 5) => Op::Intent,
            (Channel::A, 6) => Op::AcquireBlock,
            (Channel::A, 7) => Op::AcquirePerm,
            (Channel::B, 6) => Op::ProbeBlock,
            (Channel::B, 7) => Op::ProbePerm,
            (Channel::C | Channel::D, 0) => Op::AccessAck,
            (Channel::C | Channel::D, 1) => Op::AccessAckData,
            (Channel::C | Channel::D, 2) => Op::HintAck,
            (Channel::C, 4) => Op::ProbeAck,
            (Channel::C, 5) => Op::ProbeAckData,
            (Channel::C, 6) => Op::Release,
            (Channel::C, 7) => Op::ReleaseData,
            (Channel::D, 4) => Op::Grant,
            (Channel::D, 5) => Op::GrantData,
            (Channel::D, 6) => Op::ReleaseAck,
            (Channel::E, 0) => Op::GrantAck,
            (channel, opcode) => return Err(Error::UnknownOpcode { channel, opcode }),
        })
    }

    /// Whether `channel` carries this operation.
    pub const fn valid_on(self, channel: Channel) -> bool {
        match Op::decode(channel, self.opcode()) {
            Ok(op) => op as u8 == self as u8,
            Err(_) => false,
        }
    }

    /// The largest param the operation defines (0 when it has no param).
    pub const fn max_param(self) -> u8 {
        match self {
            Op::ArithmeticData => 4,
            Op::LogicalData => 3,
            Op::Intent => 1,
            Op::AcquireBlock | Op::AcquirePerm => 2,
            Op::ProbeBlock | Op::ProbePerm | Op::Grant | Op::GrantData => 2,
            Op::ProbeAck | Op::ProbeAckData | Op::Release | Op::ReleaseData => 5,
            _ => 0,
        }
    }

    /// Whether the message carries data beats.
    pub const fn has_data(self) -> bool {
        matches!(
            self,
            Op::PutFullData
                | Op::PutPartialData
                | Op::ArithmeticData
                | Op::LogicalData
                | Op::AccessAckData
                | Op::ProbeAckData
                | Op::ReleaseData
                | Op::GrantData
        )
    }

    /// Whether the data beats are interleaved with byte-mask flits (PutPartialData only).
    pub const fn has_mask(self) -> bool {
        matches!(self, Op::PutPartialData)
    }
}

/// Params of ArithmeticData (TileLink §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArithmeticParam {
    Min = 0,
    Max = 1,
    MinU = 2,
    MaxU = 3,
    Add = 4,
}

/// Params of LogicalData (TileLink §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogicalParam {
    Xor = 0,
    Or = 1,
    And = 2,
    Swap = 3,
}

/// Params of Intent (TileLink §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentParam {
    PrefetchRead = 0,
    PrefetchWrite = 1,
}

macro_rules! param_from_u8 {
    ($ty:ident { $($v:ident),* }) => {
        impl $ty {
            /// Decodes the param field; `None` outside the defined range.
            pub const fn from_u8(v: u8) -> Option<Self> {
                $(if v == $ty::$v as u8 { return Some($ty::$v); })*
                None
            }
        }
    };
}
param_from_u8!(ArithmeticParam {
    Min,
    Max,
    MinU,
    MaxU,
    Add
});
param_from_u8!(LogicalParam { Xor, Or, And, Swap });
param_from_u8!(IntentParam {
    PrefetchRead,
    PrefetchWrite
});

/// How data bytes are laid out inside a flit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    /// As the spec and SiFive hardware: the lowest-addressed byte is bits 7:0 of the flit, and
    /// flits travel most-significant byte first, so each 8-byte group appears reversed.
    #[default]
    Spec,
    /// As Western Digital's host library: bytes travel in memory order.
    Memory,
}

/// Copies `src` (memory order) into `dst` (wire order). Both are whole flits of equal length.
fn memory_to_wire(dst: &mut [u8], src: &[u8], order: ByteOrder) {
    match order {
        ByteOrder::Memory => dst.copy_from_slice(src),
        ByteOrder::Spec => {
            for (d, s) in dst.chunks_exact_mut(FLIT).zip(src.chunks_exact(FLIT)) {
                let word = u64::from_le_bytes(s.try_into().expect("flit"));
                d.copy_from_slice(&word.to_be_bytes());
            }
        }
    }
}

/// Where a payload's bytes live: in the caller's memory, or inside a received frame.
#[derive(Clone, Copy)]
enum Bytes<'a> {
    Memory(&'a [u8]),
    Wire(&'a [u8], ByteOrder),
}

/// The data beats of a message: always a whole number of 8-byte beats.
///
/// A message smaller than 8 bytes still carries one beat; its bytes sit in the lanes
/// `address % 8` of that beat (TileLink §4.6). Data parsed from a frame is not copied: it is a
/// view into the frame, and [`Data::copy_to`] turns it into memory order.
#[derive(Clone, Copy)]
pub struct Data<'a>(Bytes<'a>);

impl<'a> Data<'a> {
    /// Data given in memory order (byte 0 is the lowest address).
    pub const fn from_memory(bytes: &'a [u8]) -> Self {
        Self(Bytes::Memory(bytes))
    }

    /// Data as it sits in a frame, in the given byte order.
    pub const fn from_wire(bytes: &'a [u8], order: ByteOrder) -> Self {
        Self(Bytes::Wire(bytes, order))
    }

    /// Number of bytes (beats × 8).
    pub const fn len(&self) -> usize {
        match self.0 {
            Bytes::Memory(b) | Bytes::Wire(b, _) => b.len(),
        }
    }

    /// Whether there are no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte at memory offset `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn byte(&self, i: usize) -> u8 {
        match self.0 {
            Bytes::Memory(b) | Bytes::Wire(b, ByteOrder::Memory) => b[i],
            Bytes::Wire(b, ByteOrder::Spec) => b[(i & !7) | (7 - (i & 7))],
        }
    }

    /// Copies the bytes, in memory order, into `out[..self.len()]`.
    ///
    /// # Panics
    /// When `out` is shorter than the data.
    pub fn copy_to(&self, out: &mut [u8]) {
        let out = &mut out[..self.len()];
        match self.0 {
            Bytes::Memory(b) | Bytes::Wire(b, ByteOrder::Memory) => out.copy_from_slice(b),
            Bytes::Wire(b, ByteOrder::Spec) => {
                let mut chunks = out.chunks_exact_mut(FLIT);
                for (d, s) in (&mut chunks).zip(b.chunks_exact(FLIT)) {
                    let word = u64::from_be_bytes(s.try_into().expect("flit"));
                    d.copy_from_slice(&word.to_le_bytes());
                }
                // Data lengths are whole flits; a partial tail is only reachable through
                // `from_wire` with an odd slice, so copy it byte by byte.
                let tail = chunks.into_remainder();
                let base = b.len() - tail.len();
                for (k, d) in tail.iter_mut().enumerate() {
                    *d = b[base + k];
                }
            }
        }
    }

    /// The bytes in memory order, allocated.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len()];
        self.copy_to(&mut v);
        v
    }

    fn emit(&self, out: &mut [u8], order: ByteOrder) {
        match self.0 {
            Bytes::Memory(b) => memory_to_wire(out, b, order),
            Bytes::Wire(b, from) if from == order => out.copy_from_slice(b),
            Bytes::Wire(..) => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.byte(i);
                }
                if order == ByteOrder::Spec {
                    for chunk in out.chunks_exact_mut(FLIT) {
                        chunk.reverse();
                    }
                }
            }
        }
    }
}

impl PartialEq for Data<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.byte(i) == other.byte(i))
    }
}
impl Eq for Data<'_> {}

impl fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data[{}](", self.len())?;
        for i in 0..self.len().min(16) {
            write!(f, "{:02x}", self.byte(i))?;
        }
        if self.len() > 16 {
            write!(f, "…")?;
        }
        write!(f, ")")
    }
}

/// The payload of PutPartialData: data beats plus one byte-enable bit per byte.
///
/// On the wire a 64-bit mask flit precedes each group of up to 64 data bytes (spec §3.3,
/// Figure 15); mask bit `i` enables byte `i` of its group. In memory form the mask is a bit
/// vector: bit `i % 8` of `mask[i / 8]` enables data byte `i`, and it is 8 bytes per mask flit.
#[derive(Clone, Copy)]
pub struct MaskedData<'a>(MaskedBytes<'a>);

#[derive(Clone, Copy)]
enum MaskedBytes<'a> {
    Memory { data: &'a [u8], mask: &'a [u8] },
    Wire { raw: &'a [u8], order: ByteOrder },
}

/// Bytes of one mask flit plus its data beats on the wire.
const GROUP: usize = FLIT + 64;

impl<'a> MaskedData<'a> {
    /// Data and mask in memory form.
    pub const fn from_memory(data: &'a [u8], mask: &'a [u8]) -> Self {
        Self(MaskedBytes::Memory { data, mask })
    }

    fn from_wire(raw: &'a [u8], order: ByteOrder) -> Self {
        Self(MaskedBytes::Wire { raw, order })
    }

    /// Number of data bytes.
    pub fn len(&self) -> usize {
        match self.0 {
            MaskedBytes::Memory { data, .. } => data.len(),
            MaskedBytes::Wire { raw, .. } => {
                let groups = raw.len().div_ceil(GROUP);
                raw.len() - groups * FLIT
            }
        }
    }

    /// Whether there are no data bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of mask bytes in memory form (8 per mask flit).
    pub fn mask_len(&self) -> usize {
        match self.0 {
            MaskedBytes::Memory { mask, .. } => mask.len(),
            MaskedBytes::Wire { raw, .. } => raw.len().div_ceil(GROUP) * FLIT,
        }
    }

    /// Data byte at memory offset `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn byte(&self, i: usize) -> u8 {
        match self.0 {
            MaskedBytes::Memory { data, .. } => data[i],
            MaskedBytes::Wire { raw, order } => {
                let within = i % 64;
                let lane = match order {
                    ByteOrder::Spec => (within & !7) | (7 - (within & 7)),
                    ByteOrder::Memory => within,
                };
                raw[(i / 64) * GROUP + FLIT + lane]
            }
        }
    }

    /// Mask byte `k` in memory form (bit `j` enables data byte `8k + j`).
    ///
    /// # Panics
    /// When `k >= self.mask_len()`.
    pub fn mask_byte(&self, k: usize) -> u8 {
        match self.0 {
            MaskedBytes::Memory { mask, .. } => mask[k],
            MaskedBytes::Wire { raw, .. } => {
                let g = (k / FLIT) * GROUP;
                let word = u64::from_be_bytes(raw[g..g + FLIT].try_into().expect("flit"));
                word.to_le_bytes()[k % FLIT]
            }
        }
    }

    /// Whether data byte `i` is to be written.
    pub fn enabled(&self, i: usize) -> bool {
        self.mask_byte(i / 8) >> (i % 8) & 1 == 1
    }

    fn emit(&self, out: &mut [u8], order: ByteOrder) {
        for (g, group) in out.chunks_mut(GROUP).enumerate() {
            let mut word = [0u8; FLIT];
            for (k, w) in word.iter_mut().enumerate() {
                *w = self.mask_byte(g * FLIT + k);
            }
            group[..FLIT].copy_from_slice(&u64::from_le_bytes(word).to_be_bytes());
            let data = &mut group[FLIT..];
            for (j, d) in data.iter_mut().enumerate() {
                *d = self.byte(g * 64 + j);
            }
            if order == ByteOrder::Spec {
                for chunk in data.chunks_exact_mut(FLIT) {
                    chunk.reverse();
                }
            }
        }
    }
}

impl PartialEq for MaskedData<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.mask_len() == other.mask_len()
            && (0..self.len()).all(|i| self.byte(i) == other.byte(i))
            && (0..self.mask_len()).all(|k| self.mask_byte(k) == other.mask_byte(k))
    }
}
impl Eq for MaskedData<'_> {}

impl fmt::Debug for MaskedData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskedData[{}](mask ", self.len())?;
        for k in (0..self.mask_len().min(8)).rev() {
            write!(f, "{:02x}", self.mask_byte(k))?;
        }
        write!(f, ", data ")?;
        for i in 0..self.len().min(16) {
            write!(f, "{:02x}", self.byte(i))?;
        }
        write!(f, ")")
    }
}

/// What follows a message's header flits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload<'a> {
    #[default]
    None,
    Data(Data<'a>),
    Masked(MaskedData<'a>),
}

/// Sizes above [`MAX_SIZE`] are invalid and [`Message::check`] refuses them; length arithmetic
/// counts them as `MAX_SIZE + 1` so that sizing an unchecked message cannot overflow.
const fn length_size(size: u8) -> u8 {
    if size > MAX_SIZE { MAX_SIZE + 1 } else { size }
}

/// Number of data beats a message of `size` carries when it carries data.
pub const fn data_beats(size: u8) -> usize {
    let size = length_size(size);
    if size <= 3 { 1 } else { 1 << (size - 3) }
}

/// Number of mask flits PutPartialData of `size` carries.
pub const fn mask_flits(size: u8) -> usize {
    let size = length_size(size);
    if size <= 6 { 1 } else { 1 << (size - 6) }
}

/// Header flits of an operation on a channel: one for D responses without a sink and for E,
/// two (header plus address or sink) otherwise.
pub const fn header_flits(channel: Channel, op: Op) -> usize {
    match (channel, op) {
        (Channel::E, _) => 1,
        (Channel::D, Op::Grant | Op::GrantData) => 2,
        (Channel::D, _) => 1,
        _ => 2,
    }
}

/// Total flits a message occupies in a frame.
pub const fn message_flits(channel: Channel, op: Op, size: u8) -> usize {
    let mut n = header_flits(channel, op);
    if op.has_data() {
        n += data_beats(size);
    }
    if op.has_mask() {
        n += mask_flits(size);
    }
    n
}

mod field {
    pub const CHAN_SHIFT: u32 = 60;
    pub const OPCODE_SHIFT: u32 = 57;
    pub const PARAM_SHIFT: u32 = 52;
    pub const SIZE_SHIFT: u32 = 48;
    pub const DOMAIN_SHIFT: u32 = 40;
    pub const DENIED_BIT: u32 = 39;
    pub const CORRUPT_BIT: u32 = 38;
    pub const SOURCE_MASK: u64 = (1 << 26) - 1;
}

/// A zero-copy view of a TileLink message header flit.
#[derive(Debug, Clone, Copy)]
pub struct MessageHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MessageHeader<T> {
    /// Wraps untrusted bytes: after this succeeds no accessor can panic.
    ///
    /// # Errors
    /// [`Error::Truncated`] on fewer than 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < FLIT {
            return Err(Error::Truncated {
                needed: FLIT,
                available: len,
            });
        }
        Ok(Self { buffer })
    }
    /// The header as its 64-bit word.
    pub fn raw(&self) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[..FLIT].try_into().expect("checked"))
    }
    /// Channel bits 62:60 (0 = padding).
    pub fn channel_bits(&self) -> u8 {
        (self.raw() >> field::CHAN_SHIFT) as u8 & 7
    }
    /// Opcode bits 59:57.
    pub fn opcode(&self) -> u8 {
        (self.raw() >> field::OPCODE_SHIFT) as u8 & 7
    }
    /// Param bits 55:52.
    pub fn param(&self) -> u8 {
        (self.raw() >> field::PARAM_SHIFT) as u8 & 0xf
    }
    /// Size bits 51:48 (log2 of bytes).
    pub fn size(&self) -> u8 {
        (self.raw() >> field::SIZE_SHIFT) as u8 & 0xf
    }
    /// Domain bits 47:40.
    pub fn domain(&self) -> u8 {
        (self.raw() >> field::DOMAIN_SHIFT) as u8
    }
    /// Err bit 39: denied (channel D).
    pub fn denied(&self) -> bool {
        self.raw() >> field::DENIED_BIT & 1 == 1
    }
    /// Err bit 38: corrupt.
    pub fn corrupt(&self) -> bool {
        self.raw() >> field::CORRUPT_BIT & 1 == 1
    }
    /// Bits 25:0: source, or sink on channel E.
    pub fn source(&self) -> u32 {
        (self.raw() & field::SOURCE_MASK) as u32
    }
}

/// One TileLink message, parsed or to be emitted.
///
/// Fields a message does not carry on the wire (the address of a D message, the sink of a Get…)
/// are zero. `size` is log2 of the byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub channel: Channel,
    pub op: Op,
    pub param: u8,
    pub size: u8,
    pub domain: u8,
    /// Channel D only: the slave refused the access.
    pub denied: bool,
    pub corrupt: bool,
    /// Source id (channels A to D).
    pub source: u32,
    /// Address (channels A, B and C).
    pub address: u64,
    /// Sink id (D Grant and GrantData, and E GrantAck).
    pub sink: u32,
    pub payload: Payload<'a>,
}

impl<'a> Message<'a> {
    fn base(channel: Channel, op: Op, size: u8) -> Self {
        Message {
            channel,
            op,
            param: 0,
            size,
            domain: 0,
            denied: false,
            corrupt: false,
            source: 0,
            address: 0,
            sink: 0,
            payload: Payload::None,
        }
    }

    /// A Get of `2^size` bytes at `address` on channel A.
    pub fn get(source: u32, address: u64, size: u8) -> Self {
        Message {
            source,
            address,
            ..Self::base(Channel::A, Op::Get, size)
        }
    }

    /// A PutFullData on channel A; `data` is in memory order and covers whole beats.
    pub fn put_full_data(source: u32, address: u64, size: u8, data: &'a [u8]) -> Self {
        Message {
            source,
            address,
            payload: Payload::Data(Data::from_memory(data)),
            ..Self::base(Channel::A, Op::PutFullData, size)
        }
    }

    /// A PutPartialData on channel A with a byte-enable bit vector.
    pub fn put_partial_data(
        source: u32,
        address: u64,
        size: u8,
        data: &'a [u8],
        mask: &'a [u8],
    ) -> Self {
        Message {
            source,
            address,
            payload: Payload::Masked(MaskedData::from_memory(data, mask)),
            ..Self::base(Channel::A, Op::PutPartialData, size)
        }
    }

    /// An ArithmeticData atomic on channel A.
    pub fn arithmetic(
        source: u32,
        address: u64,
        size: u8,
        param: ArithmeticParam,
        data: &'a [u8],
    ) -> Self {
        Message {
            source,
            address,
            param: param as u8,
            payload: Payload::Data(Data::from_memory(data)),
            ..Self::base(Channel::A, Op::ArithmeticData, size)
        }
    }

    /// A LogicalData atomic on channel A.
    pub fn logical(
        source: u32,
        address: u64,
        size: u8,
        param: LogicalParam,
        data: &'a [u8],
    ) -> Self {
        Message {
            source,
            address,
            param: param as u8,
            payload: Payload::Data(Data::from_memory(data)),
            ..Self::base(Channel::A, Op::LogicalData, size)
        }
    }

    /// An Intent (prefetch hint) on channel A.
    pub fn intent(source: u32, address: u64, size: u8, param: IntentParam) -> Self {
        Message {
            source,
            address,
            param: param as u8,
            ..Self::base(Channel::A, Op::Intent, size)
        }
    }

    /// An AccessAck on channel D.
    pub fn access_ack(source: u32, size: u8, denied: bool) -> Self {
        Message {
            source,
            denied,
            ..Self::base(Channel::D, Op::AccessAck, size)
        }
    }

    /// An AccessAckData on channel D; `data` is in memory order and covers whole beats.
    pub fn access_ack_data(source: u32, size: u8, denied: bool, data: &'a [u8]) -> Self {
        Message {
            source,
            denied,
            payload: Payload::Data(Data::from_memory(data)),
            ..Self::base(Channel::D, Op::AccessAckData, size)
        }
    }

    /// A HintAck on channel D.
    pub fn hint_ack(source: u32, size: u8, denied: bool) -> Self {
        Message {
            source,
            denied,
            ..Self::base(Channel::D, Op::HintAck, size)
        }
    }

    /// A GrantAck on channel E.
    pub fn grant_ack(sink: u32) -> Self {
        Message {
            sink,
            ..Self::base(Channel::E, Op::GrantAck, 0)
        }
    }

    /// Flits the message occupies in a frame.
    pub fn flits(&self) -> usize {
        message_flits(self.channel, self.op, self.size)
    }

    /// Bytes the message occupies in a frame.
    pub fn buffer_len(&self) -> usize {
        self.flits() * FLIT
    }

    /// Checks every field against what the wire can carry and the spec allows.
    ///
    /// # Errors
    /// The first violated rule, as a typed [`Error`].
    pub fn check(&self) -> Result<()> {
        if !self.op.valid_on(self.channel) {
            return Err(Error::UnknownOpcode {
                channel: self.channel,
                opcode: self.op.opcode(),
            });
        }
        if self.size > MAX_SIZE {
            return Err(Error::SizeTooLarge(self.size));
        }
        if self.param > self.op.max_param() {
            return Err(Error::InvalidParam {
                op: self.op,
                param: self.param,
            });
        }
        let has_address = matches!(self.channel, Channel::A | Channel::B | Channel::C);
        if has_address && self.address & ((1u64 << self.size) - 1) != 0 {
            return Err(Error::UnalignedAddress {
                address: self.address,
                size: self.size,
            });
        }
        let out_of_range = |field, value: u64| Err(Error::FieldOutOfRange { field, value });
        if !has_address && self.address != 0 {
            return out_of_range("address", self.address);
        }
        if self.channel == Channel::E {
            if self.source != 0 || self.domain != 0 || self.param != 0 || self.size != 0 {
                return out_of_range("source", self.source.into());
            }
            if self.corrupt {
                return out_of_range("corrupt", 1);
            }
        } else if self.source > MAX_SOURCE {
            return out_of_range("source", self.source.into());
        }
        let carries_sink = self.channel == Channel::E
            || (self.channel == Channel::D && matches!(self.op, Op::Grant | Op::GrantData));
        if self.sink > MAX_SOURCE || (!carries_sink && self.sink != 0) {
            return out_of_range("sink", self.sink.into());
        }
        if self.denied && self.channel != Channel::D {
            return out_of_range("denied", 1);
        }
        let beats = data_beats(self.size) * FLIT;
        match (self.op.has_data(), self.op.has_mask(), &self.payload) {
            (false, _, Payload::None) => {}
            (true, false, Payload::Data(d)) if d.len() == beats => {}
            (true, true, Payload::Masked(m))
                if m.len() == beats && m.mask_len() == mask_flits(self.size) * FLIT => {}
            (_, _, payload) => {
                let got = match payload {
                    Payload::None => 0,
                    Payload::Data(d) => d.len(),
                    Payload::Masked(m) => m.len(),
                };
                let expected = if self.op.has_data() { beats } else { 0 };
                return Err(Error::PayloadLength {
                    op: self.op,
                    size: self.size,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Writes the message at the start of `buf` in the given data byte order.
    ///
    /// # Errors
    /// Whatever [`Message::check`] finds, or [`Error::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8], order: ByteOrder) -> Result<usize> {
        self.check()?;
        let len = self.buffer_len();
        let available = buf.len();
        let buf = buf.get_mut(..len).ok_or(Error::BufferTooSmall {
            needed: len,
            available,
        })?;
        let header = if self.channel == Channel::E {
            (self.channel as u64) << field::CHAN_SHIFT | u64::from(self.sink)
        } else {
            (self.channel as u64) << field::CHAN_SHIFT
                | u64::from(self.op.opcode()) << field::OPCODE_SHIFT
                | u64::from(self.param) << field::PARAM_SHIFT
                | u64::from(self.size) << field::SIZE_SHIFT
                | u64::from(self.domain) << field::DOMAIN_SHIFT
                | u64::from(self.denied) << field::DENIED_BIT
                | u64::from(self.corrupt) << field::CORRUPT_BIT
                | u64::from(self.source)
        };
        buf[..FLIT].copy_from_slice(&header.to_be_bytes());
        let mut at = FLIT;
        if header_flits(self.channel, self.op) == 2 {
            let second = if self.channel == Channel::D {
                self.sink.into()
            } else {
                self.address
            };
            buf[at..at + FLIT].copy_from_slice(&second.to_be_bytes());
            at += FLIT;
        }
        match &self.payload {
            Payload::None => {}
            Payload::Data(d) => d.emit(&mut buf[at..], order),
            Payload::Masked(m) => m.emit(&mut buf[at..], order),
        }
        Ok(len)
    }

    /// Parses the message that starts at `buf[0]`; `buf` may extend past it.
    ///
    /// # Errors
    /// A typed [`Error`] for reserved channels, unknown opcodes, bad params, unaligned addresses,
    /// or [`Error::Truncated`] when the message runs past `buf`.
    pub fn parse(buf: &'a [u8], order: ByteOrder) -> Result<Self> {
        Self::parse_at(buf, order, 0)
    }

    /// As [`Message::parse`]; `flit` is reported in errors.
    pub(crate) fn parse_at(buf: &'a [u8], order: ByteOrder, flit: usize) -> Result<Self> {
        let header = MessageHeader::new_checked(buf)?;
        let channel = match header.channel_bits() {
            0 => return Err(Error::PaddingMarkedAsMessage { flit }),
            bits => Channel::from_bits(bits).ok_or(Error::ReservedChannel {
                channel: bits,
                flit,
            })?,
        };
        let op = Op::decode(channel, header.opcode())?;
        // Channel E carries only the sink: its param, size and domain bits are reserved
        // (spec §3.3, Table 1), so they are ignored like every other reserved field.
        let size = if channel == Channel::E {
            0
        } else {
            header.size()
        };
        let mut msg = Self::base(channel, op, size);
        let len = msg.buffer_len();
        if buf.len() < len {
            return Err(Error::Truncated {
                needed: len,
                available: buf.len(),
            });
        }
        if channel == Channel::E {
            msg.sink = header.source();
            return Ok(msg);
        }
        msg.param = header.param();
        if msg.param > op.max_param() {
            return Err(Error::InvalidParam {
                op,
                param: msg.param,
            });
        }
        msg.domain = header.domain();
        msg.corrupt = header.corrupt();
        msg.denied = channel == Channel::D && header.denied();
        msg.source = header.source();
        let mut at = FLIT;
        if header_flits(channel, op) == 2 {
            let second = u64::from_be_bytes(buf[at..at + FLIT].try_into().expect("len checked"));
            if channel == Channel::D {
                msg.sink = (second & field::SOURCE_MASK) as u32;
            } else {
                if second & ((1u64 << msg.size) - 1) != 0 {
                    return Err(Error::UnalignedAddress {
                        address: second,
                        size: msg.size,
                    });
                }
                msg.address = second;
            }
            at += FLIT;
        }
        let body = &buf[at..len];
        msg.payload = if op.has_mask() {
            Payload::Masked(MaskedData::from_wire(body, order))
        } else if op.has_data() {
            Payload::Data(Data::from_wire(body, order))
        } else {
            Payload::None
        };
        Ok(msg)
    }
}
