//! A hand-written SVG line chart of the soak run's RSS over time: title, axes with "nice" tick
//! values, grid lines, the series, and a dashed marker where the warm-up ends. It owns only the
//! drawing; the numbers come from `soak.rs`. No crates, so the chart is plain text anyone can
//! diff or open in a browser.

use std::fmt::Write;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 60.0;
/// About this many ticks per axis; `nice_step` rounds the spacing to 1, 2 or 5 × 10^k.
const TICKS_TARGET: f64 = 6.0;

/// What to draw: `points` are (seconds since start, MiB).
#[derive(Debug)]
pub struct RssChart<'a> {
    pub title: &'a str,
    pub subtitle: &'a str,
    pub points: &'a [(f64, f64)],
    pub warmup_s: f64,
    /// A dashed horizontal line (MiB, label), e.g. the drift limit above the warm-up RSS.
    pub limit: Option<(f64, &'a str)>,
}

/// The chart as a complete SVG document.
pub fn render(chart: &RssChart) -> String {
    let t_max = chart.points.iter().map(|p| p.0).fold(chart.warmup_s, f64::max).max(1.0);
    // Long runs read better in minutes.
    let (x_unit, x_div) = if t_max > 600.0 { ("minutes", 60.0) } else { ("seconds", 1.0) };
    let x_step = nice_step(t_max / x_div / TICKS_TARGET);
    // The small tolerance keeps a 10.002 s run from getting an axis to 12 s.
    let x_max = (t_max / x_div / x_step - 0.01).ceil().max(1.0) * x_step;
    // The y axis starts at zero so that a flat line looks flat and a drift looks like its size.
    let limit_mib = chart.limit.map_or(0.0, |(mib, _)| mib);
    let y_data_max = chart.points.iter().map(|p| p.1).fold(limit_mib, f64::max).max(1.0);
    let y_step = nice_step(y_data_max * 1.15 / TICKS_TARGET);
    let y_max = (y_data_max * 1.15 / y_step).ceil() * y_step;

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t_s: f64| LEFT + t_s / x_div / x_max * plot_w;
    let y = |mib: f64| TOP + plot_h - mib / y_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(chart.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" text-anchor="middle" fill="#444">{}</text>"##,
        WIDTH / 2.0,
        escape(chart.subtitle)
    );

    // Grid and tick labels.
    for i in 0..=((y_max / y_step).round() as usize) {
        let v = i as f64 * y_step;
        let py = y(v);
        let _ =
            writeln!(s, r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##, LEFT + plot_w);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            py + 4.0,
            tick_label(v, y_step)
        );
    }
    for i in 0..=((x_max / x_step).round() as usize) {
        let v = i as f64 * x_step;
        let px = x(v * x_div);
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/>"##, TOP + plot_h);
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 20.0,
            tick_label(v, x_step)
        );
    }

    // Axes and their titles.
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT},{TOP} V{:.1} H{:.1}" fill="none" stroke="#000" stroke-width="1.5"/>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start ({x_unit})</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">RSS (MiB)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // Warm-up marker.
    if chart.warmup_s > 0.0 {
        let px = x(chart.warmup_s);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#c60" stroke-dasharray="6 4"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" fill="#c60">warm-up end</text>"##, px + 5.0, TOP + 16.0);
    }

    if let Some((mib, label)) = chart.limit {
        let py = y(mib);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#c00" stroke-dasharray="6 4"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c00">{}</text>"##,
            LEFT + plot_w - 6.0,
            py - 6.0,
            escape(label)
        );
    }

    // The series.
    if chart.points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no samples</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    } else {
        let mut d = String::new();
        for (i, (t_s, mib)) in chart.points.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, x(*t_s), y(*mib));
        }
        let _ = writeln!(s, r##"<path d="{d}" fill="none" stroke="#1f5fbf" stroke-width="2"/>"##);
    }
    s.push_str("</svg>\n");
    s
}

/// A tick spacing of 1, 2 or 5 × 10^k at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = if raw.is_finite() && raw > 0.0 { raw } else { 1.0 };
    let magnitude = 10_f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * magnitude >= raw * 0.999).unwrap_or(10.0);
    step * magnitude
}

/// As many decimals as the step needs: `0`, `2.5`, `0.25`.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{value:.decimals$}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        let check = |raw: f64, expected: f64| assert!((nice_step(raw) - expected).abs() < 1e-9, "{raw}");
        check(0.7, 1.0);
        check(1.0, 1.0);
        check(1.3, 2.0);
        check(3.0, 5.0);
        check(12.0, 20.0);
        check(0.04, 0.05);
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(40.0, 20.0), "40");
    }

    #[test]
    fn the_document_is_closed_and_escaped() {
        let svg = render(&RssChart {
            title: "a < b",
            subtitle: "",
            points: &[(0.0, 4.0), (10.0, 4.5)],
            warmup_s: 2.0,
            limit: None,
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b") && svg.contains("warm-up end"));
    }
}
