//! Bodies of the fuzz targets, kept here so the corpus can be replayed as an ordinary test.

use crate::frame::{FrameRepr, TloeFrame, parse_ethernet};
use crate::tilelink::{ByteOrder, Payload};
use crate::{ETHERTYPE_OMNIXTEND, MIN_ETHERNET_PAYLOAD};

/// Parses arbitrary bytes as an Ethernet frame and as a bare TLoE frame, in both byte orders.
/// Whatever parses must emit back to an equal frame. Panics only on a codec bug.
pub fn frame_parser(data: &[u8]) {
    for order in [ByteOrder::Spec, ByteOrder::Memory] {
        if let Ok((_, frame)) = parse_ethernet(data, ETHERTYPE_OMNIXTEND) {
            check_frame(&frame, order);
        }
        if let Ok(frame) = TloeFrame::new_checked(data) {
            check_frame(&frame, order);
        }
    }
}

fn check_frame(frame: &TloeFrame<&[u8]>, order: ByteOrder) {
    for msg in frame.messages(order).flatten() {
        // Touch every payload byte: accessors must stay in bounds.
        match msg.payload {
            Payload::None => {}
            Payload::Data(d) => {
                let _ = (0..d.len()).map(|i| d.byte(i)).fold(0u8, u8::wrapping_add);
            }
            Payload::Masked(m) => {
                let _ = (0..m.len()).filter(|&i| m.enabled(i)).count();
            }
        }
    }
    let Ok(repr) = FrameRepr::parse(frame, order) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len(MIN_ETHERNET_PAYLOAD)];
    let len = repr
        .emit(&mut buf, MIN_ETHERNET_PAYLOAD, order)
        .expect("a parsed frame must emit");
    let again = TloeFrame::new_checked(&buf[..len]).expect("emitted frame is well formed");
    let reparsed = FrameRepr::parse(&again, order).expect("emitted frame must parse");
    assert_eq!(reparsed, repr, "parse -> emit -> parse changed the frame");
}
