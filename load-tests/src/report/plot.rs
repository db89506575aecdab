//! The report's plots: one line chart per series of the run's timeline,
//! drawn by `plotters`' SVG backend with a labelled time axis, a labelled
//! value axis with its unit, ticks and a light grid, and the fault matrix's
//! windows shaded. The SVG is embedded in `report.html`.
//!
//! Text is written as SVG `<text>` for the browser to render: plotters is
//! built without its `ttf` feature (no fontconfig or freetype on the
//! machine), so it only estimates text sizes for the layout.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// The time axis of every chart.
pub const TIME_AXIS: &str = "time since the workers started (s)";

/// Pixel size of one chart.
const SIZE: (u32, u32) = (900, 280);
/// The series' line.
const LINE: RGBColor = RGBColor(31, 119, 180);
/// Fault windows: shading and label.
const FAULT: RGBColor = RGBColor(214, 39, 40);

/// A fault's window on the time axis.
#[derive(Debug, Clone, Copy)]
pub struct Shade<'a> {
    /// Seconds since the workers started: the fault began…
    pub from: f64,
    /// …and was lifted.
    pub to: f64,
    /// The fault's name, written at the window's top left.
    pub name: &'a str,
}

/// One series over time, as an SVG document: `ys[i]` at `xs[i]` seconds,
/// the value axis labelled `value_axis` (name and unit), `shades` drawn
/// behind the line.
pub fn svg(value_axis: &str, xs: &[f64], ys: &[f64], shades: &[Shade<'_>]) -> Result<String> {
    let x_max = xs
        .iter()
        .chain(shades.iter().map(|s| &s.to))
        .copied()
        .fold(1.0, f64::max);
    // Headroom above the highest point; a flat zero series still gets an axis.
    let y_top = ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.1;
    let y_top = if y_top < 1e-6 { 1.0 } else { y_top };
    let mut out = String::new();
    {
        let area = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&area, value_axis, (x_max, y_top), xs, ys, shades)
            .map_err(|e| anyhow!("plot of {value_axis}: {e}"))?;
        area.present()
            .map_err(|e| anyhow!("plot of {value_axis}: {e}"))?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(
    area: &Area<'_>,
    value_axis: &str,
    (x_max, y_top): (f64, f64),
    xs: &[f64],
    ys: &[f64],
    shades: &[Shade<'_>],
) -> DrawResult {
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0.0..y_top)?;
    let y_ticks = move |v: &f64| tick(*v, y_top);
    let x_ticks = move |v: &f64| tick(*v, x_max);
    chart
        .configure_mesh()
        .x_desc(TIME_AXIS)
        .y_desc(value_axis)
        .x_labels(12)
        .y_labels(6)
        .x_label_formatter(&x_ticks)
        .y_label_formatter(&y_ticks)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .max_light_lines(1)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(
        shades
            .iter()
            .filter(|s| s.to > s.from)
            .map(|s| Rectangle::new([(s.from, 0.0), (s.to, y_top)], FAULT.mix(0.15).filled())),
    )?;
    chart.draw_series(shades.iter().filter(|s| s.to > s.from).map(|s| {
        Text::new(
            s.name.to_owned(),
            (s.from, y_top),
            ("sans-serif", 12).into_font().color(&FAULT),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        xs.iter().copied().zip(ys.iter().copied()),
        LINE.stroke_width(2),
    ))?;
    Ok(())
}

/// A tick label with as many decimals as the axis's range needs (cores
/// go 0–2, messages per second to hundreds of thousands).
fn tick(v: f64, range: f64) -> String {
    let decimals = match range {
        r if r >= 20.0 => 0,
        r if r >= 2.0 => 1,
        _ => 2,
    };
    format!("{v:.decimals$}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The `<text>` elements of an SVG, trimmed: what a reader sees.
    pub(in crate::report) fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn tick_labels_carry_the_decimals_the_range_needs() {
        assert_eq!(tick(12_500.0, 30_000.0), "12500");
        assert_eq!(tick(2.5, 10.0), "2.5");
        assert_eq!(tick(0.25, 1.1), "0.25");
    }

    #[test]
    fn a_flat_zero_series_still_gets_axes() {
        let svg = svg("CPU (cores)", &[0.0, 1.0, 2.0], &[0.0; 3], &[]).unwrap();
        let texts = texts(&svg);
        assert!(texts.iter().any(|t| t == TIME_AXIS), "{texts:?}");
        assert!(texts.iter().any(|t| t == "CPU (cores)"), "{texts:?}");
        assert!(
            texts.iter().any(|t| t == "1.00"),
            "the value axis runs to 1: {texts:?}"
        );
    }
}
