//! The results chart: geobuk's headline figure relative to etcd's, one bar per row, with the
//! parity line and the 1.5× line the targets are set at (plotters, SVG).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::results::figures;
use super::suite::Row;
use super::{Comparison, System};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 460;

/// geobuk / etcd for each row that has both sides.
pub fn ratios(rows: &[Row], c: &Comparison) -> Vec<(String, f64)> {
    rows.iter()
        .filter_map(|row| {
            let e = figures(row, c.get(row.id, System::Etcd)?)?;
            let g = figures(row, c.get(row.id, System::Geobuk)?)?;
            (e.headline > 0.0).then(|| (row.id.to_string(), g.headline / e.headline))
        })
        .collect()
}

pub fn draw(path: &Path, rows: &[Row], c: &Comparison) -> Result<()> {
    let bars = ratios(rows, c);
    let mut svg = String::new();
    render(&mut svg, &bars).map_err(|e| anyhow!("draw the chart: {e}"))?;
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))
}

fn render<'s>(svg: &'s mut String, bars: &[(String, f64)]) -> Result<(), Box<dyn std::error::Error + 's>> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = bars.iter().map(|b| b.1).fold(2.0_f64, f64::max) * 1.1;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption("geobuk / etcd, same machine (higher is better)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..y_max)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("throughput ratio")
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, r))| {
        let color = if *r >= 1.0 { GREEN.mix(0.7) } else { RED.mix(0.7) };
        Rectangle::new([(i as f64 - 0.35, 0.0), (i as f64 + 0.35, *r)], color.filled())
    }))?;
    for (level, color) in [(1.0, BLACK), (1.5, BLUE)] {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, level), (n as f64 - 0.5, level)],
            color.stroke_width(1),
        )))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_bar_per_row() {
        let mut svg = String::new();
        render(&mut svg, &[("put-1".into(), 1.2), ("range-l".into(), 0.8)]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("put-1") && svg.contains("range-l"));
        assert!(svg.matches("<rect").count() >= 3, "background and two bars");
    }
}
