//! CPU cost of the link layer per message: two connections hand frames to each other directly
//! (no network), so this measures framing, acknowledgement and credit bookkeeping alone.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oxmem_link::{Config, Connection, Event, HeaderVariant, Instant};
use oxmem_wire::Message;

const BATCH: u32 = 1024;

fn pair() -> (Connection, Connection) {
    let config = Config {
        max_frame: 8192,
        min_frame: 0,
        ..Config::default()
    };
    let mut a = Connection::connect(config.clone(), HeaderVariant::V1_1, Instant::ZERO);
    let mut b = Connection::accept(config, Instant::ZERO);
    let mut buf = vec![0u8; 9000];
    for _ in 0..10 {
        while let Some(n) = a.poll_transmit(Instant::ZERO, &mut buf) {
            b.handle_frame(Instant::ZERO, &buf[..n]).unwrap();
        }
        while let Some(n) = b.poll_transmit(Instant::ZERO, &mut buf) {
            a.handle_frame(Instant::ZERO, &buf[..n]).unwrap();
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
    }
    (a, b)
}

/// Moves `BATCH` messages from a to b and the acknowledgements back.
fn transfer(
    a: &mut Connection,
    b: &mut Connection,
    now: &mut Instant,
    buf: &mut [u8],
    data: &[u8],
    size: u8,
) -> u32 {
    let mut sent = 0;
    let mut got = 0;
    while got < BATCH {
        while sent < BATCH {
            let msg = if data.is_empty() {
                Message::get(sent, 0, size)
            } else {
                Message::put_full_data(sent, 0, size, data)
            };
            if a.send(&msg).is_err() {
                break;
            }
            sent += 1;
        }
        while let Some(n) = a.poll_transmit(*now, buf) {
            b.handle_frame(*now, &buf[..n]).unwrap();
        }
        while let Some(e) = b.poll_event() {
            if let Event::Message(m) = e {
                black_box(m.as_bytes());
                got += 1;
            }
        }
        *now += Duration::from_micros(100);
        while let Some(n) = b.poll_transmit(*now, buf) {
            a.handle_frame(*now, &buf[..n]).unwrap();
        }
        while a.poll_event().is_some() {}
    }
    got
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    for (name, size, with_data) in [
        ("get_64B", 6u8, false),
        ("put_64B", 6, true),
        ("put_4KiB", 12, true),
    ] {
        let data = if with_data {
            vec![0xabu8; 1 << size]
        } else {
            Vec::new()
        };
        let (mut a, mut b) = pair();
        let mut now = Instant::ZERO;
        let mut buf = vec![0u8; 9000];
        group.bench_function(format!("{name}_per_message"), |bench| {
            bench.iter(|| transfer(&mut a, &mut b, &mut now, &mut buf, &data, size));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
