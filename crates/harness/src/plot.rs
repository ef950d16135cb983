//! Forgetting curves and accuracy curves as SVG (written directly) and PNG
//! (the same SVG rasterised by resvg; text uses the system's fonts).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::results::{atomic_write, Metrics};

const W: f64 = 760.0;
const H: f64 = 440.0;
// Margins: left, right (legend), top, bottom.
const L: f64 = 60.0;
const R: f64 = 190.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const PALETTE: [&str; 10] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

struct Series {
    label: String,
    color: String,
    width: f64,
    points: Vec<(f64, f64)>,
    /// A shaded (low, high) band under the line, one per point.
    band: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn svg(title: &str, x_max: usize, series: &[Series]) -> String {
    let (pw, ph) = (W - L - R, H - T - B);
    let x = |v: f64| L + if x_max <= 1 { pw / 2.0 } else { (v - 1.0) / (x_max as f64 - 1.0) * pw };
    let y = |v: f64| T + (1.0 - v / 100.0) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(s, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, L + pw / 2.0, esc(title));
    for k in 0..=10 {
        let v = k as f64 * 10.0;
        let _ = write!(s, r##"<line x1="{L}" x2="{}" y1="{y0}" y2="{y0}" stroke="#e5e5e5"/>"##, L + pw, y0 = y(v));
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.0}</text>"#, L - 6.0, y(v) + 4.0);
    }
    for t in 1..=x_max {
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{t}</text>"#, x(t as f64), T + ph + 18.0);
    }
    let _ = write!(s, r#"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">after task</text>"#, L + pw / 2.0, H - 10.0);
    let _ = write!(s, r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">accuracy (%)</text>"#, T + ph / 2.0);
    for se in series.iter().filter(|se| se.band.len() == se.points.len() && se.points.len() > 1) {
        let upper = se.points.iter().zip(&se.band).map(|(&(a, _), &(_, hi))| format!("{:.2},{:.2}", x(a), y(hi)));
        let lower = se.points.iter().zip(&se.band).rev().map(|(&(a, _), &(lo, _))| format!("{:.2},{:.2}", x(a), y(lo)));
        let pts: Vec<String> = upper.chain(lower).collect();
        let _ = write!(s, r#"<polygon points="{}" fill="{}" fill-opacity="0.18" stroke="none"/>"#, pts.join(" "), se.color);
    }
    for (i, se) in series.iter().enumerate() {
        if se.points.len() > 1 {
            let pts: Vec<String> = se.points.iter().map(|&(a, b)| format!("{:.2},{:.2}", x(a), y(b))).collect();
            let _ = write!(s, r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{}"/>"#, pts.join(" "), se.color, se.width);
        }
        for &(a, b) in &se.points {
            let _ = write!(s, r#"<circle cx="{:.2}" cy="{:.2}" r="2.5" fill="{}"/>"#, x(a), y(b), se.color);
        }
        let ly = T + 10.0 + 18.0 * i as f64;
        let _ =
            write!(s, r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="{}"/>"#, W - R + 12.0, W - R + 36.0, se.color, se.width);
        let _ = write!(s, r#"<text x="{}" y="{}">{}</text>"#, W - R + 42.0, ly + 4.0, esc(&se.label));
    }
    s.push_str("</svg>\n");
    s
}

/// One run: accuracy on each task over time, and on all seen classes.
pub fn forgetting_svg(m: &Metrics) -> String {
    let rows = &m.matrix.rows;
    let mut series: Vec<Series> = (0..rows.len())
        .map(|j| Series {
            label: format!("task {}", j + 1),
            color: PALETTE[j % PALETTE.len()].into(),
            width: 1.5,
            points: (j..rows.len()).map(|i| ((i + 1) as f64, rows[i][j])).collect(),
            band: Vec::new(),
        })
        .collect();
    series.push(Series {
        label: "all seen classes".into(),
        color: "black".into(),
        width: 3.0,
        points: m.matrix.seen_accuracy.iter().enumerate().map(|(i, &a)| ((i + 1) as f64, a)).collect(),
        band: Vec::new(),
    });
    svg(&format!("{} · {} · seed {}", m.name, m.method, m.seed), rows.len(), &series)
}

/// Several runs: accuracy on all seen classes after each task.
pub fn accuracy_svg(runs: &[(String, Metrics)]) -> String {
    let x_max = runs.iter().map(|(_, m)| m.matrix.num_tasks()).max().unwrap_or(1);
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, (label, m))| Series {
            label: label.clone(),
            color: PALETTE[i % PALETTE.len()].into(),
            width: 2.0,
            points: m.matrix.seen_accuracy.iter().enumerate().map(|(t, &a)| ((t + 1) as f64, a)).collect(),
            band: Vec::new(),
        })
        .collect();
    svg("accuracy on all seen classes", x_max, &series)
}

/// Groups of runs that differ only in seed (a sweep's groups): the mean
/// accuracy on all seen classes after each task, with a band of ± one
/// standard deviation over the seeds. A task only some seeds reached is
/// drawn from those.
pub fn accuracy_bands_svg(groups: &[(String, Vec<&Metrics>)]) -> String {
    let x_max = groups.iter().flat_map(|(_, ms)| ms.iter().map(|m| m.matrix.num_tasks())).max().unwrap_or(1);
    let series: Vec<Series> = groups
        .iter()
        .enumerate()
        .map(|(i, (label, ms))| {
            let stats: Vec<(f64, f64, f64)> = (0..x_max)
                .map_while(|t| {
                    let xs: Vec<f64> = ms.iter().filter_map(|m| m.matrix.seen_accuracy.get(t).copied()).collect();
                    (!xs.is_empty()).then(|| {
                        let (m, sd) = promptcl_learner::metrics::mean_std(&xs);
                        ((t + 1) as f64, m, sd)
                    })
                })
                .collect();
            Series {
                label: format!("{label} (n={})", ms.len()),
                color: PALETTE[i % PALETTE.len()].into(),
                width: 2.0,
                points: stats.iter().map(|&(t, m, _)| (t, m)).collect(),
                band: stats.iter().map(|&(_, m, sd)| ((m - sd).max(0.0), (m + sd).min(100.0))).collect(),
            }
        })
        .collect();
    svg("accuracy on all seen classes (mean ± std over seeds)", x_max, &series)
}

/// Writes `<stem>.svg` and `<stem>.png`.
pub fn write_svg_png(svg_text: &str, stem: &Path) -> Result<()> {
    atomic_write(&stem.with_extension("svg"), svg_text.as_bytes())?;
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg_text, &opt).context("rendering SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("allocating PNG")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let png = pixmap.encode_png().context("encoding PNG")?;
    Ok(atomic_write(&stem.with_extension("png"), &png)?)
}
