//! A horizontal bar chart drawn as SVG on the server: no script, no
//! external library, readable by screen readers through its title and
//! the table beside it.

use std::fmt::Write;

/// One bar.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bar {
    pub label: String,
    pub value: u64,
}

const WIDTH: u32 = 520;
const LABEL_WIDTH: u32 = 110;
const VALUE_WIDTH: u32 = 70;
const ROW: u32 = 28;
const BAR_HEIGHT: u32 = 18;

/// The chart as an `<svg>` element; `title` is its accessible name.
pub fn bar_chart(title: &str, bars: &[Bar]) -> String {
    let height = ROW * bars.len().max(1) as u32 + 8;
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1);
    let track = WIDTH - LABEL_WIDTH - VALUE_WIDTH;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        escape(title),
        escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = 4 + ROW * i as u32;
        let length = (bar.value as f64 / max as f64 * f64::from(track)).round() as u32;
        let text_y = y + BAR_HEIGHT - 4;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{text_y}\" class=\"chart-label\">{}</text>\
             <rect x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{track}\" height=\"{BAR_HEIGHT}\" class=\"chart-track\"/>\
             <rect x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{length}\" height=\"{BAR_HEIGHT}\" class=\"chart-bar chart-bar-{i}\"/>\
             <text x=\"{}\" y=\"{text_y}\" class=\"chart-value\">{}</text>",
            escape(&bar.label),
            LABEL_WIDTH + track + 8,
            bar.value
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: u64) -> Bar {
        Bar {
            label: label.into(),
            value,
        }
    }

    #[test]
    fn bars_scale_to_the_largest_value() {
        let svg = bar_chart("Delivery", &[bar("sent", 200), bar("opened", 50)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains("width=\"340\" height=\"18\" class=\"chart-bar chart-bar-0\""),
            "{svg}"
        );
        assert!(
            svg.contains("width=\"85\" height=\"18\" class=\"chart-bar chart-bar-1\""),
            "{svg}"
        );
        assert!(svg.contains(">200<") && svg.contains(">50<"));
    }

    #[test]
    fn empty_and_zero_charts_draw_without_dividing_by_zero() {
        let svg = bar_chart("Nothing yet", &[bar("sent", 0)]);
        assert!(
            svg.contains("width=\"0\" height=\"18\" class=\"chart-bar"),
            "{svg}"
        );
        assert!(bar_chart("none", &[]).contains("viewBox=\"0 0 520 36\""));
    }

    #[test]
    fn labels_are_escaped() {
        let svg = bar_chart("<script>", &[bar("a&b\"", 1)]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("a&amp;b&quot;"));
    }
}
