//! How the photo frames a located reference: the share of its outline inside the photo,
//! and whether the outline covers the photo's centre. Someone photographing a cover keeps
//! it in the frame or at least centres it; a neighbouring cover on the shelf is cut by the
//! photo's edge, off-centre. The verdict rule uses both to tell them apart.

/// Where a reference's outline lies in the photo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Framing {
    /// Share of the outline's area inside the photo (0..1).
    pub in_frame: f64,
    /// The outline contains the photo's centre.
    pub centred: bool,
}

/// The framing of a convex `outline` (the reference's corners in the photo) in a photo of
/// `width` × `height` pixels.
pub fn framing(outline: &[(f64, f64); 4], width: u32, height: u32) -> Framing {
    let (w, h) = (width as f64, height as f64);
    let whole = polygon_area(outline);
    let inside = polygon_area(&clip_to_rectangle(outline, w, h));
    Framing {
        in_frame: if whole > 0.0 {
            (inside / whole).clamp(0.0, 1.0)
        } else {
            0.0
        },
        centred: contains(outline, (w / 2.0, h / 2.0)),
    }
}

fn polygon_area(points: &[(f64, f64)]) -> f64 {
    let n = points.len();
    0.5 * (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f64>()
        .abs()
}

/// A convex polygon cut to `[0, w] × [0, h]` (Sutherland–Hodgman, one edge at a time).
fn clip_to_rectangle(polygon: &[(f64, f64)], w: f64, h: f64) -> Vec<(f64, f64)> {
    // Each edge of the rectangle as "signed distance inside" of a point.
    let edges: [&dyn Fn((f64, f64)) -> f64; 4] = [&|p| p.0, &|p| w - p.0, &|p| p.1, &|p| h - p.1];
    let mut out = polygon.to_vec();
    for inside in edges {
        let input = std::mem::take(&mut out);
        for (i, &b) in input.iter().enumerate() {
            let a = input[(i + input.len() - 1) % input.len()];
            let (da, db) = (inside(a), inside(b));
            if (da >= 0.0) != (db >= 0.0) {
                let t = da / (da - db);
                out.push((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)));
            }
            if db >= 0.0 {
                out.push(b);
            }
        }
        if out.is_empty() {
            break;
        }
    }
    out
}

/// Whether a convex polygon (either winding) contains `p`.
fn contains(polygon: &[(f64, f64); 4], p: (f64, f64)) -> bool {
    let sides: Vec<f64> = (0..4)
        .map(|i| {
            let (a, b) = (polygon[i], polygon[(i + 1) % 4]);
            (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0)
        })
        .collect();
    sides.iter().all(|s| *s >= 0.0) || sides.iter().all(|s| *s <= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> [(f64, f64); 4] {
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    }

    #[test]
    fn a_cover_inside_the_photo_is_wholly_in_frame() {
        let f = framing(&rect(100.0, 100.0, 400.0, 400.0), 640, 480);
        assert_eq!(f.in_frame, 1.0);
        assert!(f.centred);
        let f = framing(&rect(10.0, 10.0, 300.0, 470.0), 640, 480);
        assert_eq!(f.in_frame, 1.0);
        assert!(!f.centred, "the centre (320, 240) is right of it");
    }

    #[test]
    fn a_cover_cut_by_the_edge_counts_only_its_visible_part() {
        // Half of it beyond the right edge, away from the centre.
        let f = framing(&rect(540.0, 0.0, 740.0, 100.0), 640, 480);
        assert!((f.in_frame - 0.5).abs() < 1e-9, "{}", f.in_frame);
        assert!(!f.centred);
        // Bigger than the photo on every side: the photo shows a quarter of it.
        let f = framing(&rect(-320.0, -240.0, 960.0, 720.0), 640, 480);
        assert!((f.in_frame - 0.25).abs() < 1e-9, "{}", f.in_frame);
        assert!(f.centred);
    }

    #[test]
    fn a_turned_cover_is_clipped_as_a_polygon() {
        // A diamond centred on the photo's top-left corner: a quarter of it is inside.
        let diamond = [(0.0, -100.0), (100.0, 0.0), (0.0, 100.0), (-100.0, 0.0)];
        let f = framing(&diamond, 640, 480);
        assert!((f.in_frame - 0.25).abs() < 1e-9, "{}", f.in_frame);
        assert!(!f.centred);
        // Wholly outside.
        assert_eq!(
            framing(&rect(700.0, 0.0, 800.0, 50.0), 640, 480).in_frame,
            0.0
        );
    }
}
