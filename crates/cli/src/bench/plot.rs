//! The PNG chart of a bench run: bandwidth against transfer size (with iperf3 and Mooncake as
//! horizontal lines), and read/write latency at depth 1 (with the raw UDP ping-pong).
//!
//! Text needs a TrueType font, read at run time: `$OXMEM_FONT`, else DejaVu Sans or
//! Liberation Sans, else any `.ttf` under `/usr/share/fonts`. A fresh Debian machine gets one
//! with `apt-get install fonts-dejavu-core` (which `scripts/bench-netns.sh` runs when needed).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{BenchOp, Report};

const FONT: &str = "sans-serif";

/// The fonts tried first, in order.
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

fn find_font() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OXMEM_FONT") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    // Any TrueType font, breadth first.
    let mut dirs = vec![PathBuf::from("/usr/share/fonts")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
                return Some(p);
            }
        }
    }
    None
}

/// Registers a font for plotters once per process.
pub(crate) fn ensure_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = find_font().ok_or_else(|| {
            "no TrueType font found (apt-get install fonts-dejavu-core, or set OXMEM_FONT)"
                .to_string()
        })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font(FONT, style, bytes)
                .map_err(|_| format!("{}: not a usable font", path.display()))?;
        }
        Ok(())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn human_size(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Labels a log2(size) axis at its even powers of two.
fn size_tick(x: f64) -> String {
    let r = x.round();
    if (x - r).abs() < 1e-6 && r >= 0.0 && (r as u64) % 2 == 0 {
        human_size(1u64 << r as u64)
    } else {
        String::new()
    }
}

/// Tick labels for a log axis: 1, 2, 5 × powers of ten.
fn num_label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
];

/// Draws `report` to `path`.
///
/// # Errors
/// When no font is found, or the PNG cannot be written.
pub fn plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    ensure_font()?;
    if report.measurements.is_empty() {
        bail!("nothing measured");
    }
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "oxmem bench: {} ({}) on {}",
        report.label, report.target, report.machine
    );
    let root = root.titled(&title, (FONT, 18))?;
    let (left, right) = root.split_horizontally(700);
    bandwidth_panel(report, &left).context("bandwidth panel")?;
    latency_panel(report, &right).context("latency panel")?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn bandwidth_panel(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let points: Vec<_> = report
        .measurements
        .iter()
        .filter(|m| matches!(m.op, BenchOp::Read | BenchOp::Write) && m.size >= 4096)
        .collect();
    let b = &report.baselines;
    let mut hlines: Vec<(String, f64, RGBColor)> = Vec::new();
    if let Some(i) = &b.iperf3_tcp {
        hlines.push((
            format!("iperf3 TCP 1 stream ({:.2} GB/s)", i.gbytes_per_s),
            i.gbytes_per_s,
            BLACK,
        ));
    }
    for (n, r) in b.mooncake_tcp.iter().enumerate() {
        let c = [RGBColor(227, 119, 194), RGBColor(127, 127, 127)][n % 2];
        hlines.push((
            format!(
                "Mooncake TCP {} x{} ({:.3} GB/s)",
                human_size(r.block_size),
                r.batch_size * r.threads,
                r.gbytes_per_s
            ),
            r.gbytes_per_s,
            c,
        ));
    }
    let values = points
        .iter()
        .map(|m| m.gbytes_per_s)
        .chain(hlines.iter().map(|h| h.1))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.001, 10.0)
    };
    let xs = points.iter().map(|m| m.size);
    let (xmin, xmax) = xs.fold((u64::MAX, 0), |(l, h), s| (l.min(s), h.max(s)));
    let (xmin, xmax) = if xmax == 0 {
        (11.7, 22.3)
    } else {
        ((xmin as f64).log2() - 0.3, (xmax as f64).log2() + 0.3)
    };
    let mut chart = ChartBuilder::on(area)
        .caption("Bandwidth (GB/s, 10^9 B/s) vs transfer size", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xmin..xmax, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("transfer size (log scale)")
        .y_desc("GB/s")
        .x_labels(24)
        .x_label_formatter(&|x| size_tick(*x))
        .y_label_formatter(&|y| num_label(*y))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    let mut series: Vec<(BenchOp, usize)> = points.iter().map(|m| (m.op, m.depth)).collect();
    series.sort_by_key(|(op, d)| (*op as u8, *d));
    series.dedup();
    for (n, (op, depth)) in series.iter().enumerate() {
        let color = SERIES_COLORS[n % SERIES_COLORS.len()];
        let mut data: Vec<(f64, f64)> = points
            .iter()
            .filter(|m| m.op == *op && m.depth == *depth && m.gbytes_per_s > 0.0)
            .map(|m| ((m.size as f64).log2(), m.gbytes_per_s))
            .collect();
        data.sort_by(|a, b| a.0.total_cmp(&b.0));
        let label = format!("{} depth {depth}", format!("{op:?}").to_lowercase());
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(data.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        if *op == BenchOp::Write {
            chart.draw_series(
                data.iter()
                    .map(|p| TriangleMarker::new(*p, 5, color.filled())),
            )?;
        } else {
            chart.draw_series(data.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    for (label, v, color) in hlines {
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin, v), (xmax, v)],
                8,
                5,
                style,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

fn latency_panel(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let points: Vec<_> = report
        .measurements
        .iter()
        .filter(|m| {
            matches!(m.op, BenchOp::Read | BenchOp::Write)
                && m.depth == 1
                && [64, 4096, 65536].contains(&m.size)
        })
        .collect();
    let pp = report.baselines.udp_ping_pong.as_ref();
    let values = points
        .iter()
        .flat_map(|m| [m.p50_us, m.p99_us])
        .chain(pp.iter().flat_map(|p| [p.p50_us, p.p99_us]))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (1.0, 1000.0)
    };
    let (xmin, xmax) = (5.6f64, 16.4f64); // log2 of 64 B .. 64 KiB
    let mut chart = ChartBuilder::on(area)
        .caption("Latency at depth 1 (us): p50 solid, p99 dashed", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xmin..xmax, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("transfer size (log scale)")
        .y_desc("microseconds")
        .x_labels(24)
        .x_label_formatter(&|x| size_tick(*x))
        .y_label_formatter(&|y| num_label(*y))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    for (n, op) in [BenchOp::Read, BenchOp::Write].into_iter().enumerate() {
        let color = SERIES_COLORS[n * 3];
        let mut ms: Vec<_> = points.iter().filter(|m| m.op == op).collect();
        if ms.is_empty() {
            continue;
        }
        ms.sort_by_key(|m| m.size);
        let name = format!("{op:?}").to_lowercase();
        let p50: Vec<(f64, f64)> = ms
            .iter()
            .map(|m| ((m.size as f64).log2(), m.p50_us))
            .collect();
        let p99: Vec<(f64, f64)> = ms
            .iter()
            .map(|m| ((m.size as f64).log2(), m.p99_us))
            .collect();
        let solid = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(p50.clone(), solid))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], solid));
        chart.draw_series(p50.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        chart
            .draw_series(DashedLineSeries::new(p99.clone(), 6, 4, solid))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 6, y), (x + 10, y), (x + 18, y)], solid)
            });
        chart.draw_series(
            p99.iter()
                .map(|p| TriangleMarker::new(*p, 5, color.filled())),
        )?;
    }
    if let Some(p) = pp {
        for (what, v, color) in [
            ("p50", p.p50_us, BLACK),
            ("p99", p.p99_us, RGBColor(127, 127, 127)),
        ] {
            let style = color.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xmin, v), (xmax, v)],
                    8,
                    5,
                    style,
                ))?
                .label(format!("UDP ping-pong {} B {what} ({v:.1} us)", p.size))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::baselines::{Baselines, Iperf, MooncakeResult, PingPong};
    use crate::bench::{Measurement, Report};

    fn m(op: BenchOp, size: u64, depth: usize, gb: f64, p50: f64) -> Measurement {
        Measurement {
            op,
            size,
            depth,
            ops: 1000,
            seconds: 1.0,
            ops_per_s: gb * 1e9 / size as f64,
            gbytes_per_s: gb,
            p50_us: p50,
            p99_us: p50 * 3.0,
            p999_us: p50 * 5.0,
            max_us: p50 * 9.0,
            errors: 0,
        }
    }

    #[test]
    fn draws_a_png_when_a_font_is_installed() {
        if find_font().is_none() {
            eprintln!("no TrueType font installed: skipping");
            return;
        }
        let mut measurements = Vec::new();
        for op in [BenchOp::Read, BenchOp::Write] {
            for (size, p50) in [(64, 15.0), (4096, 25.0), (65536, 80.0)] {
                measurements.push(m(op, size, 1, size as f64 / p50 / 1e3, p50));
            }
            for size in [4096u64, 65536, 1 << 20] {
                measurements.push(m(op, size, 8, 0.2 * (size as f64).log2() / 10.0, 100.0));
            }
        }
        let report = Report {
            label: "test".into(),
            target: "udp://127.0.0.1:1".into(),
            machine: "test machine".into(),
            measurements,
            baselines: Baselines {
                udp_ping_pong: Some(PingPong {
                    size: 64,
                    round_trips: 10,
                    lost: 0,
                    p50_us: 6.0,
                    p99_us: 9.0,
                    p999_us: 20.0,
                }),
                iperf3_tcp: Some(Iperf {
                    gbytes_per_s: 2.5,
                    seconds: 2.0,
                }),
                mooncake_tcp: vec![MooncakeResult {
                    op: "read".into(),
                    block_size: 1 << 20,
                    batch_size: 8,
                    threads: 1,
                    gbytes_per_s: 1.0,
                    ops_per_s: 1000.0,
                }],
                skipped: vec![],
            },
            targets: vec![],
        };
        let path = std::env::temp_dir().join(format!("oxmem-plot-test-{}.png", std::process::id()));
        plot(&report, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 10_000);
    }
}
