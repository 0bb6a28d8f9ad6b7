//! An inverted index word → exemplars over a [`Vocabulary`]: each exemplar's bag of
//! words (tf-idf, normalised) is spread over the posting lists of its words, and a query
//! scores only the exemplars on its own words' lists. Exemplars are kept in dense slots
//! (reused after removals) so a posting is 8 bytes and a query's scores one flat array.

use crate::vocabulary::{Norm, Vocabulary, VocabularyError, VocabularyParams};
use crate::{Descriptors, LocalFeatures};
use exemplar_core::catalogue::ExemplarId;
use exemplar_core::shortlist::{WordIndex, WordIndexFitter};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Posting {
    slot: u32,
    weight: f32,
}

#[derive(Debug, Clone, PartialEq)]
struct Document {
    id: ExemplarId,
    /// The words it is posted under (to take it out again).
    words: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct VisualWords {
    vocabulary: Arc<Vocabulary>,
    norm: Norm,
    postings: Vec<Vec<Posting>>,
    slots: Vec<Option<Document>>,
    free: Vec<u32>,
    by_id: HashMap<ExemplarId, u32>,
}

const MAGIC: &[u8; 4] = b"EXW1";

/// The SIFT descriptors of stored local features (`None`: unreadable or ORB).
fn sift(bytes: &[u8]) -> Option<Vec<crate::vocabulary::Descriptor>> {
    match LocalFeatures::from_bytes(bytes).ok()?.descriptors {
        Descriptors::Sift(d) => Some(d),
        Descriptors::Orb(_) => None,
    }
}

impl VisualWords {
    pub fn new(vocabulary: Arc<Vocabulary>, norm: Norm) -> Self {
        let words = vocabulary.words();
        Self {
            vocabulary,
            norm,
            postings: vec![Vec::new(); words],
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    pub fn vocabulary(&self) -> &Arc<Vocabulary> {
        &self.vocabulary
    }

    /// Indexes an exemplar's bag of words (replacing what it had).
    pub fn insert_bag(&mut self, id: ExemplarId, bag: &[(u32, f32)]) {
        self.remove_id(id);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        for &(word, weight) in bag {
            self.postings[word as usize].push(Posting { slot, weight });
        }
        self.slots[slot as usize] = Some(Document {
            id,
            words: bag.iter().map(|w| w.0).collect(),
        });
        self.by_id.insert(id, slot);
    }

    fn remove_id(&mut self, id: ExemplarId) -> bool {
        let Some(slot) = self.by_id.remove(&id) else {
            return false;
        };
        if let Some(doc) = self.slots[slot as usize].take() {
            for w in doc.words {
                self.postings[w as usize].retain(|p| p.slot != slot);
            }
        }
        self.free.push(slot);
        true
    }

    /// The `k` best exemplars for a query's bag of words.
    pub fn search_bag(&self, bag: &[(u32, f32)], k: usize) -> Vec<(ExemplarId, f32)> {
        let mut scores = vec![0.0f32; self.slots.len()];
        for &(word, q) in bag {
            for p in &self.postings[word as usize] {
                scores[p.slot as usize] += self.norm.combine(q, p.weight);
            }
        }
        let mut hits: Vec<(u32, f32)> = scores
            .into_iter()
            .enumerate()
            .filter(|(_, s)| *s > 0.0)
            .map(|(slot, s)| (slot as u32, s))
            .collect();
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if hits.len() > k && k > 0 {
            hits.select_nth_unstable_by(k - 1, by_score);
            hits.truncate(k);
        }
        hits.sort_by(by_score);
        hits.truncate(k);
        hits.into_iter()
            .filter_map(|(slot, s)| Some((self.slots[slot as usize].as_ref()?.id, s)))
            .collect()
    }

    /// Bytes the postings take (8 per posting) plus the per-exemplar bookkeeping.
    pub fn memory_bytes(&self) -> usize {
        let postings: usize = self.postings.iter().map(|p| p.capacity() * 8).sum();
        let documents: usize = self
            .slots
            .iter()
            .flatten()
            .map(|d| 32 + d.words.capacity() * 4)
            .sum();
        postings + documents + self.by_id.capacity() * 16
    }

    /// The inverse of [`WordIndex::save`].
    pub fn load(bytes: &[u8]) -> Result<Self, VocabularyError> {
        let bad = |m: &str| VocabularyError(format!("word index: {m}"));
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(bad("not in the EXW1 format"));
        }
        let norm = match bytes[4] {
            1 => Norm::L1,
            2 => Norm::L2,
            _ => return Err(bad("unknown norm")),
        };
        let (vocabulary, used) = Vocabulary::from_bytes(&bytes[5..])?;
        let words = vocabulary.words() as u32;
        let mut index = Self::new(Arc::new(vocabulary), norm);
        let mut rest = &bytes[5 + used..];
        let mut take = |n: usize| -> Result<&[u8], VocabularyError> {
            if rest.len() < n {
                return Err(bad("cut short"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let count = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let mut bag = Vec::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let entries = take(n.checked_mul(8).ok_or_else(|| bad("too many words"))?)?;
            bag.clear();
            for e in entries.chunks_exact(8) {
                let word = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
                let weight = f32::from_le_bytes(e[4..].try_into().expect("4 bytes"));
                if word >= words || !weight.is_finite() {
                    return Err(bad("a posting is out of range"));
                }
                bag.push((word, weight));
            }
            index.insert_bag(id, &bag);
        }
        Ok(index)
    }

    /// Each indexed exemplar's bag of words, rebuilt from the posting lists.
    fn bags(&self) -> Vec<(ExemplarId, Vec<(u32, f32)>)> {
        let mut bags: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.slots.len()];
        for (word, list) in self.postings.iter().enumerate() {
            for p in list {
                bags[p.slot as usize].push((word as u32, p.weight));
            }
        }
        self.slots
            .iter()
            .zip(bags)
            .filter_map(|(doc, bag)| Some((doc.as_ref()?.id, bag)))
            .collect()
    }
}

impl WordIndex for VisualWords {
    fn version(&self) -> &str {
        self.vocabulary.version()
    }

    fn insert(&mut self, id: ExemplarId, local: &[u8]) -> bool {
        let Some(descriptors) = sift(local) else {
            return false;
        };
        let bag = self.vocabulary.bag(&descriptors, self.norm);
        self.insert_bag(id, &bag);
        true
    }

    /// Quantises on every core, then posts in order.
    fn insert_batch(&mut self, items: &[(ExemplarId, Vec<u8>)]) -> usize {
        use rayon::prelude::*;
        let bags: Vec<Option<Vec<(u32, f32)>>> = items
            .par_iter()
            .map(|(_, local)| sift(local).map(|d| self.vocabulary.bag(&d, self.norm)))
            .collect();
        let mut indexed = 0;
        for ((id, _), bag) in items.iter().zip(bags) {
            if let Some(bag) = bag {
                self.insert_bag(*id, &bag);
                indexed += 1;
            }
        }
        indexed
    }

    fn remove(&mut self, id: ExemplarId) -> bool {
        self.remove_id(id)
    }

    fn contains(&self, id: ExemplarId) -> bool {
        self.by_id.contains_key(&id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn search(&self, query: &[u8], k: usize) -> Vec<(ExemplarId, f32)> {
        match sift(query) {
            Some(d) => self.search_bag(&self.vocabulary.bag(&d, self.norm), k),
            None => Vec::new(),
        }
    }

    /// Magic, norm (1 = L1, 2 = L2), the vocabulary, the exemplar count (u64), then per
    /// exemplar its id (i64), word count (u32) and (word u32, weight f32) pairs.
    fn save(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&[match self.norm {
            Norm::L1 => 1,
            Norm::L2 => 2,
        }])?;
        out.write_all(&self.vocabulary.to_bytes())?;
        let bags = self.bags();
        out.write_all(&(bags.len() as u64).to_le_bytes())?;
        for (id, bag) in bags {
            out.write_all(&id.to_le_bytes())?;
            out.write_all(&(bag.len() as u32).to_le_bytes())?;
            for (word, weight) in bag {
                out.write_all(&word.to_le_bytes())?;
                out.write_all(&weight.to_le_bytes())?;
            }
        }
        Ok(())
    }
}

/// Fits [`Vocabulary`] trees on SIFT features and indexes with them.
#[derive(Debug, Clone, Default)]
pub struct VocabularyFitter {
    pub params: VocabularyParams,
    pub norm: Norm,
}

impl VocabularyFitter {
    /// The descriptors the fit needs per word, on average, for the tree to be worth it.
    const DESCRIPTORS_PER_WORD: usize = 10;
}

impl WordIndexFitter for VocabularyFitter {
    fn fit(&self, samples: &[&[u8]]) -> Option<Box<dyn WordIndex>> {
        let features: Vec<_> = samples.iter().filter_map(|b| sift(b)).collect();
        let slices: Vec<&[crate::vocabulary::Descriptor]> =
            features.iter().map(Vec::as_slice).collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let words = self.params.branching.pow(self.params.depth as u32);
        if total < words * Self::DESCRIPTORS_PER_WORD / 10 || slices.len() < 2 {
            return None;
        }
        let vocabulary = Vocabulary::fit(&slices, &self.params);
        Some(Box::new(VisualWords::new(Arc::new(vocabulary), self.norm)))
    }

    fn min_exemplars(&self) -> usize {
        // About 1,000 features per exemplar.
        (self.params.branching.pow(self.params.depth as u32) * Self::DESCRIPTORS_PER_WORD / 1000)
            .max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypoint;

    fn features(seed: u64, n: usize) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let descriptors: Vec<[u8; 128]> = (0..n).map(|_| std::array::from_fn(|_| next())).collect();
        LocalFeatures {
            width: 100,
            height: 100,
            origin: (0, 0),
            keypoints: vec![
                Keypoint {
                    x: 1.0,
                    y: 1.0,
                    angle: 0.0,
                    level: 0,
                    response: 0.0
                };
                n
            ],
            descriptors: Descriptors::Sift(descriptors),
        }
        .to_bytes()
    }

    fn fitted(images: &[Vec<u8>]) -> Box<dyn WordIndex> {
        let fitter = VocabularyFitter {
            params: VocabularyParams {
                branching: 8,
                depth: 2,
                ..VocabularyParams::default()
            },
            norm: Norm::L1,
        };
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        fitter.fit(&refs).expect("enough features")
    }

    #[test]
    fn an_exemplar_is_found_by_its_own_words_and_follows_removals() {
        let images: Vec<Vec<u8>> = (0..20).map(|i| features(i, 200)).collect();
        let mut index = fitted(&images);
        for (i, f) in images.iter().enumerate() {
            assert!(index.insert(i as i64, f));
        }
        assert!(!index.insert(99, b"not features"));
        assert_eq!(index.len(), 20);
        for (i, f) in images.iter().enumerate() {
            assert_eq!(index.search(f, 1)[0].0, i as i64);
        }
        assert!(index.remove(7));
        assert!(!index.remove(7));
        assert!(!index.contains(7));
        assert!(index.search(&images[7], 20).iter().all(|(id, _)| *id != 7));
        // A re-added exemplar reuses the free slot and is found again.
        assert!(index.insert(70, &images[7]));
        assert_eq!(index.search(&images[7], 1)[0].0, 70);
    }

    #[test]
    fn a_saved_index_loads_with_the_same_answers() {
        let images: Vec<Vec<u8>> = (0..12).map(|i| features(100 + i, 150)).collect();
        let mut index = fitted(&images);
        for (i, f) in images.iter().enumerate() {
            index.insert(i as i64 * 3, f);
        }
        index.remove(6);
        let mut bytes = Vec::new();
        index.save(&mut bytes).unwrap();
        let back = VisualWords::load(&bytes).unwrap();
        assert_eq!(back.version(), index.version());
        assert_eq!(back.len(), 11);
        for f in &images {
            assert_eq!(back.search(f, 5), index.search(f, 5));
        }
        assert!(VisualWords::load(&bytes[..bytes.len() - 3]).is_err());
        assert!(VisualWords::load(b"EXW1").is_err());
    }
}
