//! ImageNet-1k class names, for `exemplar classify`.

const CLASSES: &str = include_str!("../assets/imagenet_classes.txt");

/// The name of class `index` (0-based), e.g. 281 → "tabby, tabby cat".
pub fn class_name(index: usize) -> &'static str {
    CLASSES.lines().nth(index).unwrap_or("?")
}

/// The `k` most probable classes of a softmax row, best first.
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_the_ilsvrc_list() {
        assert_eq!(CLASSES.lines().count(), 1000);
        assert_eq!(class_name(0), "tench, Tinca tinca");
        assert!(class_name(281).starts_with("tabby"));
        assert_eq!(top_k(&[0.1, 0.7, 0.2], 2), vec![(1, 0.7), (2, 0.2)]);
    }
}
