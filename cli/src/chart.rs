//! `--chart FILE.svg`: the comparison as three bar charts side by side
//! (wall time, peak RSS, minor faults), each bar the malloc's median as a
//! ratio to the first malloc's (glibc's), with a line at 1.

use crate::compare::Row;
use crate::run::{mib, thousands};
use std::fmt::Write as _;

const PANEL_HEIGHT: f64 = 320.0;
const BAR_TOP: f64 = 70.0;
const BAR_BOTTOM: f64 = 260.0;
const COLORS: [&str; 8] = [
    "#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
];

/// The SVG document for `rows` (the first row is the reference).
pub fn svg(command: &str, rows: &[Row]) -> String {
    let bar_step = 64.0;
    let panel_width = (bar_step * rows.len() as f64 + 40.0).max(240.0);
    let width = panel_width * 3.0 + 20.0;
    let height = PANEL_HEIGHT + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">buddyslab compare: {}</text>"#,
        escape(command)
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="40" fill="#555">medians; bars are ratios to {} (lower is better)</text>"##,
        escape(&rows[0].name)
    );

    type Metric = (&'static str, fn(&Row) -> f64, fn(f64) -> String);
    let metrics: [Metric; 3] = [
        ("wall time", |r| r.seconds, |v| format!("{v:.3} s")),
        ("peak RSS", |r| r.peak_rss_kib, |v| mib(v.round() as u64)),
        (
            "minor faults",
            |r| r.minor_faults,
            |v| thousands(v.round() as u64),
        ),
    ];
    for (panel, (title, value, label)) in metrics.iter().enumerate() {
        let x0 = 10.0 + panel as f64 * panel_width;
        let base = value(&rows[0]);
        let ratios: Vec<f64> = rows
            .iter()
            .map(|r| if base > 0.0 { value(r) / base } else { 0.0 })
            .collect();
        let top = ratios.iter().copied().fold(1.0, f64::max);
        let scale = (BAR_BOTTOM - BAR_TOP) / top;
        let _ = writeln!(
            out,
            r#"<g transform="translate({x0},{y})"><text x="{cx}" y="{ty}" text-anchor="middle" font-weight="bold">{title}</text>"#,
            y = 20.0,
            cx = panel_width / 2.0,
            ty = BAR_TOP - 30.0,
        );
        for (i, (row, ratio)) in rows.iter().zip(&ratios).enumerate() {
            let x = 20.0 + i as f64 * bar_step;
            let h = ratio * scale;
            let y = BAR_BOTTOM - h;
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="{y:.1}" width="{w}" height="{h:.1}" fill="{c}"><title>{name}: {v}</title></rect>"#,
                w = bar_step - 14.0,
                c = COLORS[i % COLORS.len()],
                name = escape(&row.name),
                v = escape(&label(value(row))),
            );
            let _ = writeln!(
                out,
                r#"<text x="{cx}" y="{ly:.1}" text-anchor="middle">{ratio:.2}</text>"#,
                cx = x + (bar_step - 14.0) / 2.0,
                ly = y - 5.0,
            );
            let _ = writeln!(
                out,
                r##"<text x="{cx}" y="{ny}" text-anchor="middle">{name}</text><text x="{cx}" y="{vy}" text-anchor="middle" fill="#555" font-size="10">{v}</text>"##,
                cx = x + (bar_step - 14.0) / 2.0,
                ny = BAR_BOTTOM + 16.0,
                vy = BAR_BOTTOM + 30.0,
                name = escape(&row.name),
                v = escape(&label(value(row))),
            );
        }
        let one = BAR_BOTTOM - scale;
        let _ = writeln!(
            out,
            r##"<line x1="10" x2="{x2}" y1="{one:.1}" y2="{one:.1}" stroke="#000" stroke-dasharray="4 3"/><line x1="10" x2="{x2}" y1="{BAR_BOTTOM}" y2="{BAR_BOTTOM}" stroke="#000"/></g>"##,
            x2 = panel_width - 10.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Text made safe for XML content and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_tallest_ratio() {
        let rows = [
            Row {
                name: "glibc".into(),
                seconds: 1.0,
                peak_rss_kib: 1024.0,
                minor_faults: 100.0,
                seconds_min: 1.0,
                seconds_max: 1.0,
                runs: 1,
            },
            Row {
                name: "b<&>".into(),
                seconds: 2.0,
                peak_rss_kib: 512.0,
                minor_faults: 100.0,
                seconds_min: 2.0,
                seconds_max: 2.0,
                runs: 1,
            },
        ];
        let svg = svg("prog 'a b'", &rows);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("b&lt;&amp;&gt;") && !svg.contains("b<&>"));
        assert!(svg.contains(">2.00<") && svg.contains(">0.50<"));
        // The tallest bar (ratio 2 in the time panel) spans the whole area.
        let full = format!("y=\"{BAR_TOP:.1}\"");
        assert!(svg.contains(&full), "{svg}");
        assert_eq!(svg.matches("<rect x=").count(), 6);
    }
}
