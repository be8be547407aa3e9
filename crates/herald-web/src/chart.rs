//! Charts drawn as SVG on the server (a horizontal bar chart and a line
//! chart over time): no script, no external library, readable by screen
//! readers through their title and the table beside them.

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

/// One line of a [`line_chart`]: a value per point of the x axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub values: Vec<u64>,
}

/// The axes' titles and the x axis's point labels of a [`line_chart`].
pub struct Axes<'a> {
    pub x_title: &'a str,
    pub y_title: &'a str,
    pub x_labels: &'a [String],
}

const LINE_HEIGHT: u32 = 260;
const PLOT_LEFT: u32 = 56;
const PLOT_RIGHT: u32 = WIDTH - 12;
const PLOT_TOP: u32 = 30;
const PLOT_BOTTOM: u32 = LINE_HEIGHT - 52;
/// Labelled x points at most, so labels never overlap.
const X_LABELS: usize = 3;

/// A line chart of `series` over the points `axes.x_labels` names, with
/// labelled axes, a legend, and `title` as its accessible name.
pub fn line_chart(title: &str, axes: &Axes<'_>, series: &[Series]) -> String {
    let points = axes.x_labels.len();
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_width = f64::from(PLOT_RIGHT - PLOT_LEFT);
    let plot_height = f64::from(PLOT_BOTTOM - PLOT_TOP);
    let x = |i: usize| {
        if points <= 1 {
            f64::from(PLOT_LEFT) + plot_width / 2.0
        } else {
            f64::from(PLOT_LEFT) + plot_width * i as f64 / (points - 1) as f64
        }
    };
    let y = |v: u64| f64::from(PLOT_BOTTOM) - plot_height * v as f64 / max as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart chart-over-time\" viewBox=\"0 0 {WIDTH} {LINE_HEIGHT}\" role=\"img\" aria-label=\"{title}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{title}</title>\
         <line x1=\"{PLOT_LEFT}\" y1=\"{PLOT_BOTTOM}\" x2=\"{PLOT_RIGHT}\" y2=\"{PLOT_BOTTOM}\" class=\"chart-axis\"/>\
         <line x1=\"{PLOT_LEFT}\" y1=\"{PLOT_TOP}\" x2=\"{PLOT_LEFT}\" y2=\"{PLOT_BOTTOM}\" class=\"chart-axis\"/>",
        title = escape(title)
    );
    let mut ticks = vec![0, max.div_ceil(2), max];
    ticks.dedup();
    for value in ticks {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" class=\"chart-tick\" text-anchor=\"end\">{value}</text>",
            PLOT_LEFT - 6,
            y(value) + 4.0
        );
    }
    for i in labelled_points(points) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" class=\"chart-tick\" text-anchor=\"middle\">{}</text>",
            x(i),
            PLOT_BOTTOM + 16,
            escape(&axes.x_labels[i])
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" class=\"chart-axis-title\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" class=\"chart-axis-title\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        f64::from(PLOT_LEFT) + plot_width / 2.0,
        LINE_HEIGHT - 8,
        escape(axes.x_title),
        f64::from(PLOT_TOP) + plot_height / 2.0,
        f64::from(PLOT_TOP) + plot_height / 2.0,
        escape(axes.y_title)
    );
    for (n, line) in series.iter().enumerate() {
        let coordinates: Vec<String> = line
            .values
            .iter()
            .take(points)
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" class=\"chart-line chart-line-{n}\"/>",
            coordinates.join(" ")
        );
        for point in &coordinates {
            let (cx, cy) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" class=\"chart-point chart-line-{n}\"/>"
            );
        }
        let legend_x = PLOT_LEFT + 110 * n as u32;
        let _ = write!(
            svg,
            "<rect x=\"{legend_x}\" y=\"8\" width=\"12\" height=\"12\" class=\"chart-key chart-line-{n}\"/>\
             <text x=\"{}\" y=\"18\" class=\"chart-label\">{}</text>",
            legend_x + 16,
            escape(&line.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The points whose x label is drawn: the first, the last, and the middle.
fn labelled_points(points: usize) -> Vec<usize> {
    let mut labelled: Vec<usize> = (0..X_LABELS)
        .map(|k| k * points.saturating_sub(1) / (X_LABELS - 1))
        .filter(|&i| i < points)
        .collect();
    labelled.dedup();
    labelled
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

    fn axes(labels: &[String]) -> Axes<'_> {
        Axes {
            x_title: "Time (UTC)",
            y_title: "Events per hour",
            x_labels: labels,
        }
    }

    #[test]
    fn lines_scale_to_the_largest_value_with_labelled_axes() {
        let labels: Vec<String> = ["10:00", "11:00", "12:00", "13:00", "14:00"]
            .map(String::from)
            .to_vec();
        let svg = line_chart(
            "Events over time",
            &axes(&labels),
            &[
                Series {
                    label: "Delivered".into(),
                    values: vec![0, 4, 8, 2, 0],
                },
                Series {
                    label: "Opened".into(),
                    values: vec![0, 0, 1, 1, 0],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("aria-label=\"Events over time\""));
        assert!(svg.contains(">Time (UTC)<") && svg.contains(">Events per hour<"));
        // The peak touches the plot's top; zero sits on the x axis.
        assert!(
            svg.contains("points=\"56.0,208.0 169.0,119.0 282.0,30.0 395.0,163.5 508.0,208.0\""),
            "{svg}"
        );
        for tick in [">0<", ">4<", ">8<"] {
            assert!(svg.contains(tick), "y tick {tick}: {svg}");
        }
        assert!(svg.contains(">10:00<") && svg.contains(">12:00<") && svg.contains(">14:00<"));
        assert!(
            !svg.contains(">11:00<"),
            "only first, middle and last are labelled"
        );
        assert!(svg.contains(">Delivered<") && svg.contains("chart-line chart-line-1"));
    }

    #[test]
    fn a_single_point_or_no_events_draw_without_dividing_by_zero() {
        let one = ["10:00".to_owned()];
        let svg = line_chart(
            "one",
            &axes(&one),
            &[Series {
                label: "Delivered".into(),
                values: vec![0],
            }],
        );
        assert!(svg.contains("points=\"282.0,208.0\""), "{svg}");
        assert_eq!(svg.matches(">10:00<").count(), 1);
        let none = line_chart("none", &axes(&[]), &[]);
        assert!(none.ends_with("</svg>") && !none.contains("NaN"));
    }

    #[test]
    fn labels_are_escaped() {
        let svg = bar_chart("<script>", &[bar("a&b\"", 1)]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("a&amp;b&quot;"));
    }
}
