//! A labelled folder of images: what `groundtruth.tsv` says is a query, a reference or
//! a group, and the images of a folder.

use crate::error::{EvalError as Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// File extensions treated as images when a folder is listed.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Every image file under `dir`, recursively, sorted.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image_path(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A labelled folder, as described by its `groundtruth.tsv` header.
#[derive(Debug, Clone, PartialEq)]
pub enum GroundTruth {
    /// `path  group  is_query`: every query ranks all other images (INRIA Holidays).
    Groups {
        images: Vec<PathBuf>,
        groups: Vec<String>,
        is_query: Vec<bool>,
    },
    /// `query  reference  [attribute]`: queries are ranked against the catalogue, which is
    /// every image in the folders that hold the referenced files. An empty reference means
    /// the query's item is not in the catalogue.
    QueryReference {
        catalogue: Vec<PathBuf>,
        queries: Vec<QueryCase>,
        /// Name of the third column (e.g. `camera`), if any.
        attribute: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryCase {
    pub query: PathBuf,
    /// Index into the catalogue.
    pub reference: Option<usize>,
    pub attribute: Option<String>,
}

impl GroundTruth {
    /// Reads `DIR/groundtruth.tsv` (or the given TSV file); paths in it are relative to
    /// the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let tsv = if path.is_dir() {
            path.join("groundtruth.tsv")
        } else {
            path.to_path_buf()
        };
        let root = tsv.parent().unwrap_or(Path::new(".")).to_path_buf();
        let gt_err = |reason: String| Error::GroundTruth {
            path: tsv.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&tsv).map_err(|e| gt_err(e.to_string()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or_else(|| gt_err("empty file".into()))?
            .split('\t')
            .map(str::trim)
            .collect();
        let rows: Vec<Vec<&str>> = lines
            .map(|l| l.split('\t').map(str::trim).collect())
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        fn cell<'a>(row: &[&'a str], i: usize) -> &'a str {
            row.get(i).copied().unwrap_or("")
        }

        if let (Some(p), Some(g), Some(q)) = (column("path"), column("group"), column("is_query")) {
            let mut images = Vec::new();
            let mut groups = Vec::new();
            let mut is_query = Vec::new();
            for (n, row) in rows.iter().enumerate() {
                if cell(row, p).is_empty() {
                    return Err(gt_err(format!("row {}: empty path", n + 2)));
                }
                images.push(root.join(cell(row, p)));
                groups.push(cell(row, g).to_string());
                is_query.push(matches!(cell(row, q), "1" | "true" | "yes"));
            }
            if !is_query.iter().any(|q| *q) {
                return Err(gt_err("no row has is_query=1".into()));
            }
            return Ok(GroundTruth::Groups {
                images,
                groups,
                is_query,
            });
        }

        let (Some(qc), Some(rc)) = (column("query"), column("reference")) else {
            return Err(gt_err(format!(
                "header {header:?}: expected `path group is_query` or `query reference [attribute]`"
            )));
        };
        let attribute_col = (0..header.len()).find(|i| *i != qc && *i != rc);
        let references: Vec<Option<PathBuf>> = rows
            .iter()
            .map(|r| {
                Some(cell(r, rc))
                    .filter(|s| !s.is_empty())
                    .map(|s| root.join(s))
            })
            .collect();
        // The catalogue: every image in each folder that holds a reference, so that
        // un-queried references (e.g. 265 DVD covers for 7 photos) compete too.
        let folders: BTreeSet<PathBuf> = references
            .iter()
            .flatten()
            .map(|r| r.parent().unwrap_or(&root).to_path_buf())
            .collect();
        let mut catalogue = BTreeSet::new();
        for folder in &folders {
            for entry in std::fs::read_dir(folder)
                .map_err(|e| gt_err(format!("{}: {e}", folder.display())))?
            {
                let entry = entry?.path();
                if entry.is_file() && is_image_path(&entry) {
                    catalogue.insert(entry);
                }
            }
        }
        let catalogue: Vec<PathBuf> = catalogue.into_iter().collect();
        let mut queries = Vec::new();
        for (n, (row, reference)) in rows.iter().zip(&references).enumerate() {
            let reference = match reference {
                None => None,
                Some(r) => Some(catalogue.iter().position(|c| c == r).ok_or_else(|| {
                    gt_err(format!(
                        "row {}: reference {} is not an image file",
                        n + 2,
                        r.display()
                    ))
                })?),
            };
            queries.push(QueryCase {
                query: root.join(cell(row, qc)),
                reference,
                attribute: attribute_col.map(|c| cell(row, c).to_string()),
            });
        }
        Ok(GroundTruth::QueryReference {
            catalogue,
            queries,
            attribute: attribute_col.map(|c| header[c].to_string()),
        })
    }

    /// Adds images to the catalogue as references no query expects (query/reference
    /// sets only; an image already there is not added twice). Returns how many were added.
    pub fn add_distractors(&mut self, images: impl IntoIterator<Item = PathBuf>) -> Result<usize> {
        let GroundTruth::QueryReference { catalogue, .. } = self else {
            return Err(Error::GroundTruth {
                path: "--distractors".into(),
                reason:
                    "distractors apply to query/reference sets, not to path/group/is_query ones"
                        .into(),
            });
        };
        let known: BTreeSet<PathBuf> = catalogue.iter().cloned().collect();
        let before = catalogue.len();
        // Appended after the originals, so query reference indices stay valid.
        catalogue.extend(
            images
                .into_iter()
                .filter(|p| !known.contains(p))
                .collect::<BTreeSet<_>>(),
        );
        Ok(catalogue.len() - before)
    }

    /// Every image that must be embedded, each once: catalogue first, then queries.
    pub fn all_images(&self) -> Vec<PathBuf> {
        match self {
            GroundTruth::Groups { images, .. } => images.clone(),
            GroundTruth::QueryReference {
                catalogue, queries, ..
            } => catalogue
                .iter()
                .cloned()
                .chain(queries.iter().map(|q| q.query.clone()))
                .collect(),
        }
    }
}
