//! 22-bit sequence number arithmetic (spec §4.1).

use oxmem_wire::tloe::SEQ_MASK;

/// Half the sequence space: the go-back-N window and the duplicate horizon.
pub const WINDOW: u32 = 1 << 21;

/// `a + n` modulo 2^22.
pub const fn add(a: u32, n: u32) -> u32 {
    a.wrapping_add(n) & SEQ_MASK
}

/// `a - b` modulo 2^22: how far `a` is ahead of `b`.
pub const fn diff(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b) & SEQ_MASK
}

/// How a received sequence number relates to the one expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The expected frame: process it.
    InOrder,
    /// Already received (up to 2^21 behind): drop it and acknowledge.
    Duplicate,
    /// A frame before it was lost: drop it and NAK.
    Ahead,
}

/// Classifies `seq` against `expected` (spec §4.1: a frame whose number is within 2^21 behind
/// the last one received is a duplicate; anything else means frames were lost).
pub const fn classify(seq: u32, expected: u32) -> Arrival {
    if seq == expected {
        Arrival::InOrder
    } else if diff(add(expected, SEQ_MASK), seq) < WINDOW {
        Arrival::Duplicate
    } else {
        Arrival::Ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_wraps_at_2_to_the_22() {
        assert_eq!(add(SEQ_MASK, 1), 0);
        assert_eq!(add(SEQ_MASK, 5), 4);
        assert_eq!(diff(2, SEQ_MASK), 3);
        assert_eq!(diff(5, 5), 0);
    }

    #[test]
    fn classification_across_the_wrap() {
        assert_eq!(classify(0, 0), Arrival::InOrder);
        assert_eq!(classify(SEQ_MASK, 0), Arrival::Duplicate);
        assert_eq!(classify(1, 0), Arrival::Ahead);
        // Exactly 2^21 behind the last received is still a duplicate; one more is "ahead".
        let expected = 10;
        let last = add(expected, SEQ_MASK);
        assert_eq!(
            classify(diff(last, WINDOW - 1), expected),
            Arrival::Duplicate
        );
        assert_eq!(classify(diff(last, WINDOW), expected), Arrival::Ahead);
    }
}
