//! `--chart FILE.svg`: the comparison as three bar charts side by side
//! (wall time, peak RSS, minor faults), each bar the malloc's median as a
//! ratio to the first malloc's (glibc's), with a line at 1.
//!
//! Every malloc has its colour by name ([`colour_of`]), the same in every
//! chart and in the README's charts (`docs/compare-*.svg`), so a reader
//! who learnt that buddyslab is red need not read the labels again. Under
//! the title a caption says what the figures were measured on: the
//! machine, the runs per malloc and each malloc's version or library
//! ([`Caption`]).

use crate::run::{mib, thousands};
use std::fmt::Write as _;

/// The medians of one malloc, and the fastest and slowest run: one bar
/// of each chart (the comparison fills them).
pub struct Row {
    pub name: String,
    pub seconds: f64,
    pub peak_rss_kib: f64,
    pub minor_faults: f64,
    pub seconds_min: f64,
    pub seconds_max: f64,
    /// Finished runs (0: the first passed `--timeout`; the figures are NaN).
    pub runs: usize,
}

const PANEL_HEIGHT: f64 = 320.0;
const BAR_TOP: f64 = 70.0;
const BAR_BOTTOM: f64 = 260.0;
/// The colours of the mallocs `compare` knows, as `benches/compare.py`
/// draws them in the README's charts.
const NAMED_COLOURS: [(&str, &str); 5] = [
    ("glibc", "#7f7f7f"),
    ("buddyslab", "#d62728"),
    ("jemalloc", "#1f77b4"),
    ("mimalloc", "#2ca02c"),
    ("tcmalloc", "#ff7f0e"),
];
/// Colours for other names (`--with`), none of them a named malloc's.
const OTHER_COLOURS: [&str; 6] = [
    "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
];
/// Caption text: its size and the width of one character at that size,
/// rounded up for a sans-serif font (about 0.55 em on average), so a line
/// laid out with it does not run past the edge.
const CAPTION_SIZE: f64 = 11.0;
const CAPTION_CHAR_W: f64 = 7.0;
/// Vertical distance between caption lines.
const CAPTION_LINE: f64 = 15.0;

/// What a chart says about how its figures were made.
pub struct Caption {
    /// `uname -m`, the CPUs the runs could use, the kernel (`uname -sr`).
    pub machine: String,
    /// Runs per malloc (the medians' sample size).
    pub runs: usize,
    /// Per malloc, in the chart's order: its name and what is known of
    /// its version and library ("2.36", "5.3.0-1 (/usr/lib/…)").
    pub libraries: Vec<(String, String)>,
}

/// The colour of the malloc called `name`: a fixed one for the mallocs
/// `compare` knows, else one picked by the name's hash, so a name has the
/// same colour in every chart whatever else is in it.
pub fn colour_of(name: &str) -> &'static str {
    if let Some((_, colour)) = NAMED_COLOURS.iter().find(|(n, _)| *n == name) {
        return colour;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    });
    OTHER_COLOURS[(hash % OTHER_COLOURS.len() as u64) as usize]
}

/// `1 run`, `3 runs`.
fn runs(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// The caption's lines, each at most `width` units wide: the machine and
/// the runs, then the mallocs on lines of their own, wrapped between
/// entries (an entry longer than a line is cut with an ellipsis).
fn caption_lines(caption: &Caption, reference: &str, width: f64) -> Vec<String> {
    let chars = ((width / CAPTION_CHAR_W) as usize).max(20);
    let mut lines = Vec::new();
    let mut wrap = |entries: Vec<String>| {
        let mut line = String::new();
        for entry in entries {
            let entry = if entry.chars().count() > chars {
                entry.chars().take(chars - 1).collect::<String>() + "\u{2026}"
            } else {
                entry
            };
            if line.is_empty() {
                line = entry;
            } else if line.chars().count() + 1 + entry.chars().count() <= chars {
                line = line + " " + &entry;
            } else {
                lines.push(std::mem::replace(&mut line, entry));
            }
        }
        lines.push(line);
    };
    wrap(vec![
        format!("machine: {};", caption.machine),
        format!("medians of {} per malloc;", runs(caption.runs)),
        format!("bars are ratios to {reference} (lower is better)"),
    ]);
    let count = caption.libraries.len();
    wrap(
        caption
            .libraries
            .iter()
            .enumerate()
            .map(|(i, (name, about))| {
                let head = if i == 0 { "mallocs: " } else { "" };
                let tail = if i + 1 < count { ";" } else { "" };
                if about.is_empty() {
                    format!("{head}{name}{tail}")
                } else {
                    format!("{head}{name} {about}{tail}")
                }
            })
            .collect(),
    );
    lines
}

/// The SVG document for `rows` (the first row is the reference).
pub fn svg(command: &str, rows: &[Row], caption: &Caption) -> String {
    let bar_step = 64.0;
    let panel_width = (bar_step * rows.len() as f64 + 40.0).max(240.0);
    let width = panel_width * 3.0 + 20.0;
    let lines = caption_lines(caption, &rows[0].name, width - 20.0);
    // The panels start under the last caption line.
    let last_line = 40.0 + CAPTION_LINE * (lines.len() - 1) as f64;
    let panel_y = last_line - 12.0;
    let height = panel_y + PANEL_HEIGHT + 20.0;
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
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text class="caption" x="10" y="{}" font-size="{CAPTION_SIZE}" fill="#555">{}</text>"##,
            40.0 + CAPTION_LINE * i as f64,
            escape(line)
        );
    }

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
        let one = BAR_BOTTOM - scale;
        let _ = writeln!(
            out,
            r#"<g transform="translate({x0},{panel_y})"><text x="{cx}" y="{ty}" text-anchor="middle" font-weight="bold">{title}</text>"#,
            cx = panel_width / 2.0,
            ty = BAR_TOP - 30.0,
        );
        // The line at 1 goes under the bars and their labels.
        let _ = writeln!(
            out,
            r##"<line class="one" x1="10" x2="{x2}" y1="{one:.1}" y2="{one:.1}" stroke="#000" stroke-dasharray="4 3"/>"##,
            x2 = panel_width - 10.0,
        );
        for (i, (row, ratio)) in rows.iter().zip(&ratios).enumerate() {
            let x = 20.0 + i as f64 * bar_step;
            let h = ratio * scale;
            let y = BAR_BOTTOM - h;
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="{y:.1}" width="{w}" height="{h:.1}" fill="{c}"><title>{name}: {v}</title></rect>"#,
                w = bar_step - 14.0,
                c = colour_of(&row.name),
                name = escape(&row.name),
                v = escape(&label(value(row))),
            );
            let _ = writeln!(
                out,
                r#"<text class="ratio" x="{cx}" y="{ly:.1}" text-anchor="middle">{ratio:.2}</text>"#,
                cx = x + (bar_step - 14.0) / 2.0,
                ly = ratio_label_y(y, one),
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
        let _ = writeln!(
            out,
            r##"<line x1="10" x2="{x2}" y1="{BAR_BOTTOM}" y2="{BAR_BOTTOM}" stroke="#000"/></g>"##,
            x2 = panel_width - 10.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The baseline of a bar's ratio label: just above the bar's top at `y`,
/// unless the line at 1 (at `one`) would then cross the text (12 units of
/// text: 10 above the baseline, 2 below), when it goes just above the line.
fn ratio_label_y(y: f64, one: f64) -> f64 {
    let baseline = y - 5.0;
    if baseline - 10.0 <= one && one <= baseline + 2.0 {
        one - 3.0
    } else {
        baseline
    }
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
    /// The number in `text` right after the first `prefix` (an SVG
    /// attribute's opening, `y="`), up to the closing quote.
    fn number_after(text: &str, prefix: &str) -> f64 {
        text.split(prefix)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    use super::*;
    use std::collections::HashMap;

    fn row(name: &str, seconds: f64, peak_rss_kib: f64) -> Row {
        Row {
            name: name.into(),
            seconds,
            peak_rss_kib,
            minor_faults: 100.0,
            seconds_min: seconds,
            seconds_max: seconds,
            runs: 1,
        }
    }

    fn caption() -> Caption {
        Caption {
            machine: "x86_64, 2 CPUs, Linux 6.1.0".into(),
            runs: 3,
            libraries: vec![
                ("glibc".into(), "2.36".into()),
                (
                    "buddyslab".into(),
                    "0.1.0 (target/release/libbuddyslab.so)".into(),
                ),
            ],
        }
    }

    #[test]
    fn bars_scale_to_the_tallest_ratio() {
        let rows = [row("glibc", 1.0, 1024.0), row("b<&>", 2.0, 512.0)];
        let svg = svg("prog 'a b'", &rows, &caption());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("b&lt;&amp;&gt;") && !svg.contains("b<&>"));
        assert!(svg.contains(">2.00<") && svg.contains(">0.50<"));
        // The tallest bar (ratio 2 in the time panel) spans the whole area.
        let full = format!("y=\"{BAR_TOP:.1}\"");
        assert!(svg.contains(&full), "{svg}");
        assert_eq!(svg.matches("<rect x=").count(), 6);
    }

    /// Each bar's name and fill, from its hover title.
    fn fills(svg: &str) -> HashMap<String, String> {
        svg.lines()
            .filter(|l| l.starts_with("<rect x=") && l.contains("<title>"))
            .map(|l| {
                let fill = l
                    .split("fill=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let title = l.split("<title>").nth(1).unwrap();
                let name = title.split(": ").next().unwrap();
                (name.to_string(), fill.to_string())
            })
            .collect()
    }

    /// A malloc keeps its colour whatever else a chart holds and in what
    /// order; two mallocs in one chart differ.
    #[test]
    fn each_malloc_has_one_colour_in_every_chart() {
        let a = svg(
            "a",
            &[
                row("glibc", 1.0, 1.0),
                row("buddyslab", 1.0, 1.0),
                row("jemalloc", 1.0, 1.0),
            ],
            &caption(),
        );
        let b = svg(
            "b",
            &[
                row("glibc", 1.0, 1.0),
                row("jemalloc", 1.0, 1.0),
                row("mimalloc", 1.0, 1.0),
                row("tcmalloc", 1.0, 1.0),
                row("mine", 1.0, 1.0),
                row("buddyslab", 1.0, 1.0),
            ],
            &caption(),
        );
        let (a, b) = (fills(&a), fills(&b));
        assert_eq!(a.len(), 3);
        for (name, colour) in &a {
            assert_eq!(b.get(name), Some(colour), "{name}");
        }
        let mut colours: Vec<&String> = b.values().collect();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), b.len(), "two mallocs share a colour: {b:?}");
        for (_, named) in NAMED_COLOURS {
            assert!(!OTHER_COLOURS.contains(&named));
        }
    }

    /// The README's charts (drawn by benches/compare.py) colour each
    /// malloc as the tool does.
    #[test]
    fn the_readme_charts_use_the_same_colours() {
        for chart in ["compare-time.svg", "compare-rss.svg"] {
            let path = format!("{}/../docs/{chart}", env!("CARGO_MANIFEST_DIR"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut seen = 0;
            for line in text
                .lines()
                .filter(|l| l.starts_with("<rect ") && l.contains("<title>"))
            {
                let fill = line
                    .split("fill=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                // "<title>WORKLOAD MALLOC: RATIO</title>"
                let title = line.split("<title>").nth(1).unwrap();
                let name = title
                    .split(": ")
                    .next()
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap();
                assert_eq!(
                    colour_of(name),
                    fill,
                    "docs/{chart} colours {name} unlike `compare --chart`: benches/compare.py \
                     should colour by name as chart::colour_of does"
                );
                seen += 1;
            }
            assert!(seen > 0, "no bars in {path}");
        }
    }

    /// No ratio label has the line at 1 through it, whatever the ratio.
    #[test]
    fn the_line_at_one_crosses_no_label() {
        let ratios = [1.0, 0.99, 0.97, 0.95, 0.93, 0.9, 1.01, 1.04, 0.5];
        let rows: Vec<Row> = ratios
            .iter()
            .map(|&r| row(&format!("m{r}"), r, 1024.0 * r))
            .collect();
        let svg = svg("p", &rows, &caption());
        let mut panels = 0;
        for panel in svg.split("<g transform=").skip(1) {
            panels += 1;
            let one = number_after(panel.split("<line class=\"one\"").nth(1).unwrap(), "y1=\"");
            let mut labels = 0;
            for label in panel.split("<text class=\"ratio\"").skip(1) {
                let y = number_after(label, "y=\"");
                assert!(
                    !(y - 10.0 <= one && one <= y + 2.0),
                    "a label at {y} crosses the line at {one}"
                );
                labels += 1;
            }
            assert_eq!(labels, ratios.len());
        }
        assert_eq!(panels, 3);
        assert_eq!(ratio_label_y(100.0, 200.0), 95.0);
        assert_eq!(ratio_label_y(100.0, 100.0), 95.0);
        assert_eq!(ratio_label_y(105.0, 100.0), 97.0);
    }

    /// The caption says the machine, the runs and every malloc's version or
    /// library, in lines that fit the chart; "1 run" is singular.
    #[test]
    fn the_caption_says_machine_runs_and_versions() {
        let mut c = caption();
        let rows = [row("glibc", 1.0, 1.0), row("buddyslab", 1.0, 1.0)];
        let text = svg("p", &rows, &c);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("<text class=\"caption\""))
            .map(|l| &l[l.find('>').unwrap() + 1..l.find("</text>").unwrap()])
            .collect();
        let all = lines.join(" ");
        assert!(all.starts_with("machine: x86_64, 2 CPUs, Linux 6.1.0; medians of 3 runs per malloc; bars are ratios to glibc (lower is better)"), "{all}");
        // The mallocs start a line of their own.
        assert_eq!(
            *lines.last().unwrap(),
            "mallocs: glibc 2.36; buddyslab 0.1.0 (target/release/libbuddyslab.so)"
        );

        // Long library paths wrap between entries and every line fits.
        c.runs = 1;
        let long = "/opt/a/rather/long/prefix/that/goes/on/and/on/lib";
        c.libraries = (0..8)
            .map(|i| (format!("m{i}"), format!("1.{i} ({long}/libm{i}.so)")))
            .collect();
        c.libraries.push(("huge".into(), "x".repeat(400)));
        let rows: Vec<Row> = c.libraries.iter().map(|(n, _)| row(n, 1.0, 1.0)).collect();
        let text = svg("p", &rows, &c);
        let width = number_after(&text, "width=\"");
        let captions: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("<text class=\"caption\""))
            .map(|l| l[l.find('>').unwrap() + 1..l.find("</text>").unwrap()].to_string())
            .collect();
        assert!(captions.len() > 3, "{captions:?}");
        assert!(captions
            .iter()
            .any(|l| l.contains("medians of 1 run per malloc;")));
        assert!(captions
            .iter()
            .any(|l| l.contains("bars are ratios to m0 (lower is better)")));
        for line in &captions {
            assert!(
                10.0 + line.chars().count() as f64 * CAPTION_CHAR_W <= width,
                "{line:?} is wider than {width}"
            );
        }
        for (name, _) in &c.libraries {
            assert!(
                captions.iter().any(|l| l.contains(&format!("{name} "))),
                "{name} missing"
            );
        }
        assert!(captions.last().unwrap().ends_with('\u{2026}'));
        // The panels start under the caption.
        let panel_y: f64 = text
            .split("<g transform=\"translate(")
            .nth(1)
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let last = number_after(
            text.lines()
                .rfind(|l| l.starts_with("<text class=\"caption\""))
                .unwrap(),
            "y=\"",
        );
        assert!(
            panel_y + BAR_TOP - 30.0 - 12.0 >= last,
            "panel titles overlap the caption"
        );
    }
}
