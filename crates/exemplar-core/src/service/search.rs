//! `POST /search`: two stages. The photo (and its centre, a second view) is embedded and
//! searched in the ANN index for a shortlist; each shortlisted exemplar's stored local
//! features are then checked against the photo's for one consistent geometry. Verified
//! exemplars come first, most inliers first; the verdict names a class only on verified
//! evidence. A global-only service (no verifier) ranks and decides by similarity.

use super::{bad, Catalogue, ClassScore, Neighbour, SearchAnswer, ServiceError, StageTimings};
use super::{Extraction, Upload, Verdict};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, ClassId, ExemplarId, ExemplarOwner, Metadata};
use crate::embed_queue::Want;
use crate::extractor::{LocalFor, View};
use crate::rerank::{reorder, verify_shortlist};
use crate::shortlist::merge_shortlists;
use crate::verifier::Evidence;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A shortlisted exemplar that passed the filters.
struct Candidate {
    id: ExemplarId,
    score: f32,
    owner: ExemplarOwner,
    evidence: Option<Evidence>,
}

/// Exemplars with their global similarity, best first.
type Hits = Vec<(ExemplarId, f32)>;
/// The nearest exemplars and the query views' descriptors.
type Nearest = (Hits, Vec<Vec<f32>>);

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Nearest exemplars of the photo, classes ranked by their best exemplar, and a verdict.
    /// `filters`: only classes whose metadata holds every key=value pair.
    pub async fn search(
        &self,
        upload: &Upload,
        k: usize,
        filters: &Metadata,
    ) -> Result<SearchAnswer, ServiceError> {
        if k == 0 || k > self.limits.max_k {
            return Err(bad(
                "bad_k",
                format!("k must be between 1 and {}", self.limits.max_k),
            ));
        }
        // A search runs within one index version: one that overlapped a re-index switch
        // (the count moved, or was odd: a switch under way) runs again.
        for _ in 0..3 {
            let before = self.switches.load(Ordering::SeqCst);
            if before % 2 == 1 {
                drop(self.gate.read().await); // the switch holds the gate alone
                continue;
            }
            let answer = self.search_once(upload, k, filters).await?;
            if let (Some(answer), true) = (answer, self.switches.load(Ordering::SeqCst) == before) {
                return Ok(answer);
            }
        }
        Err(ServiceError::Busy(
            "the index version kept changing during the search".into(),
        ))
    }

    /// `None` when the model was swapped between embedding the photo and searching.
    async fn search_once(
        &self,
        upload: &Upload,
        k: usize,
        filters: &Metadata,
    ) -> Result<Option<SearchAnswer>, ServiceError> {
        let started = Instant::now();
        let mut wants = vec![(
            upload,
            Want {
                crop: upload.crop,
                view: View::Whole,
                local: if self.verifying() {
                    LocalFor::Query
                } else {
                    LocalFor::Nothing
                },
            },
        )];
        if let (true, Some(fraction)) = (self.verifying(), self.two_stage.centre_view) {
            wants.push((
                upload,
                Want {
                    crop: upload.crop,
                    view: View::Centre(fraction),
                    local: LocalFor::Nothing,
                },
            ));
        }
        let extraction = self.extraction();
        let mut views = self.extract_all(&extraction, &wants).await?;
        let query_local = views[0].local.take();
        let embed_ms = millis(started);

        let started = Instant::now();
        let depth = if self.verifying() {
            self.two_stage.shortlist.max(k)
        } else {
            k
        };
        // Fetch more than needed when filtering: filtered-out neighbours are dropped.
        let wanted = if filters.is_empty() {
            depth
        } else {
            (depth * 2).max(k * 8).max(64)
        };
        let Some((mut hits, queries)) = self.nearest(&extraction, &views, wanted)? else {
            return Ok(None);
        };
        if let Some(query) = &query_local {
            hits = self.merge_words(hits, &queries, query, wanted).await?;
        }
        let ids: Vec<ExemplarId> = hits.iter().map(|(id, _)| *id).collect();
        let mut owners: BTreeMap<ExemplarId, ExemplarOwner> = self
            .store
            .owners(&ids)
            .await?
            .into_iter()
            .map(|o| (o.exemplar, o))
            .collect();
        // Deleted meanwhile (no owner) or filtered out: dropped.
        let mut candidates: Vec<Candidate> = hits
            .into_iter()
            .filter_map(|(id, score)| {
                let owner = owners.remove(&id)?;
                let keep = filters
                    .iter()
                    .all(|(key, value)| owner.metadata.get(key) == Some(value));
                keep.then_some(Candidate {
                    id,
                    score,
                    owner,
                    evidence: None,
                })
            })
            .take(depth)
            .collect();
        let shortlist_ms = millis(started);

        let started = Instant::now();
        if let Some(query) = query_local {
            self.verify(&query, &mut candidates).await?;
        }
        let verify_ms = if self.verifying() {
            millis(started)
        } else {
            0.0
        };
        Ok(Some(self.answer(
            candidates,
            k,
            StageTimings {
                embed_ms,
                shortlist_ms,
                verify_ms,
            },
        )))
    }

    /// The `wanted` nearest exemplars over every view of the query (best score per
    /// exemplar), projected and searched in one space even if a swap is about to happen;
    /// and the views' descriptors. `None` when `extraction`, which embedded the views, is
    /// no longer the space's model.
    fn nearest(
        &self,
        extraction: &Arc<Extraction>,
        views: &[crate::Extracted],
        wanted: usize,
    ) -> Result<Option<Nearest>, ServiceError> {
        let space = self.read_space();
        if !Arc::ptr_eq(&space.extraction, extraction) {
            return Ok(None);
        }
        let mut best: HashMap<ExemplarId, f32> = HashMap::new();
        let mut queries = Vec::with_capacity(views.len());
        for view in views {
            let query = space
                .projection
                .apply(&view.pooled)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            for (id, score) in space
                .index
                .search(&query, wanted)
                .map_err(ServiceError::Internal)?
            {
                let entry = best.entry(id).or_insert(score);
                *entry = entry.max(score);
            }
            queries.push(query);
        }
        let mut hits: Vec<(ExemplarId, f32)> = best.into_iter().collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(wanted);
        Ok(Some((hits, queries)))
    }

    /// The global hits merged with the word index's best (see [`merge_shortlists`]): an
    /// exemplar only the words found gets its global score from its stored descriptor
    /// (the best over the query's views), so every candidate is scored alike.
    async fn merge_words(
        &self,
        global: Vec<(ExemplarId, f32)>,
        queries: &[Vec<f32>],
        query_local: &[u8],
        wanted: usize,
    ) -> Result<Vec<(ExemplarId, f32)>, ServiceError> {
        let word_hits: Vec<ExemplarId> = match self.read_words().as_ref() {
            Some(words) => words
                .search(query_local, wanted)
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
            None => return Ok(global),
        };
        let global_ids: Vec<ExemplarId> = global.iter().map(|(id, _)| *id).collect();
        let merged = merge_shortlists(&global_ids, &word_hits, wanted);
        let mut scores: HashMap<ExemplarId, f32> = global.into_iter().collect();
        let words_only: Vec<ExemplarId> = merged
            .iter()
            .filter(|id| !scores.contains_key(id))
            .copied()
            .collect();
        for (id, descriptor) in self.store.descriptors(&words_only).await? {
            let score = queries
                .iter()
                .map(|q| crate::cosine(q, &descriptor))
                .fold(f32::MIN, f32::max);
            scores.insert(id, score);
        }
        // Deleted meanwhile: no descriptor, dropped.
        Ok(merged
            .into_iter()
            .filter_map(|id| Some((id, *scores.get(&id)?)))
            .collect())
    }

    /// Fills in each candidate's evidence with [`verify_shortlist`] (chunk by chunk in
    /// shortlist order until one settles the search); candidates without stored local
    /// features (stored before verification was on) stay unverified.
    async fn verify(&self, query: &[u8], candidates: &mut [Candidate]) -> Result<(), ServiceError> {
        let Some(verifier) = self.verifier.clone() else {
            return Ok(());
        };
        let query: Arc<[u8]> = query.into();
        let ids: Vec<ExemplarId> = candidates.iter().map(|c| c.id).collect();
        let verify_chunk = |range: std::ops::Range<usize>| {
            let (verifier, query) = (verifier.clone(), query.clone());
            let ids = &ids[range];
            async move {
                let mut stored: HashMap<ExemplarId, Vec<u8>> =
                    self.store.local_features(ids).await?.into_iter().collect();
                let (with_local, references): (Vec<usize>, Vec<Vec<u8>>) = ids
                    .iter()
                    .enumerate()
                    .filter_map(|(i, id)| stored.remove(id).map(|bytes| (i, bytes)))
                    .unzip();
                // Verification is CPU-bound (a millisecond per candidate): off the async
                // workers.
                let seen = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&[u8]> = references.iter().map(Vec::as_slice).collect();
                    verifier.verify(&query, &refs)
                })
                .await
                .map_err(|e| ServiceError::Internal(format!("verification failed: {e}")))?;
                let mut evidence = vec![None; ids.len()];
                for (i, e) in with_local.into_iter().zip(seen) {
                    evidence[i] = Some(e);
                }
                Ok::<_, ServiceError>(evidence)
            }
        };
        let evidence = verify_shortlist(
            candidates.len(),
            self.two_stage.early_stop,
            &self.verdict,
            verify_chunk,
        )
        .await?;
        for (candidate, e) in candidates.iter_mut().zip(evidence) {
            candidate.evidence = e;
        }
        Ok(())
    }

    /// Orders candidates (verified first, most inliers first, then by similarity), keeps
    /// `k`, groups them by class and decides.
    fn answer(&self, candidates: Vec<Candidate>, k: usize, timings: StageTimings) -> SearchAnswer {
        let strength: Vec<usize> = candidates
            .iter()
            .map(|c| match &c.evidence {
                Some(e) if self.verdict.verified(e) => e.inliers as usize,
                _ => 0,
            })
            .collect();
        // Unverified candidates by their global score: the shortlist interleaves the word
        // index's, whose order says nothing once verification has spoken.
        let mut global: Vec<usize> = (0..candidates.len()).collect();
        global.sort_by(|a, b| candidates[*b].score.total_cmp(&candidates[*a].score));
        let strength: Vec<usize> = global.iter().map(|&i| strength[i]).collect();
        let order = reorder(&global, &strength, self.verdict.min_inliers.max(1) as usize);
        let best_inliers = candidates
            .iter()
            .filter_map(|c| c.evidence.as_ref().map(|e| e.inliers))
            .max();
        let best_score = candidates.iter().map(|c| c.score).reduce(f32::max);
        let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
        let mut neighbours = Vec::with_capacity(k);
        // Classes in the order of their best neighbour.
        let mut classes: Vec<ClassScore> = Vec::new();
        let mut position: BTreeMap<ClassId, usize> = BTreeMap::new();
        for i in order.into_iter().take(k) {
            let c = slots[i].take().expect("each candidate once");
            let at = *position.entry(c.owner.class).or_insert_with(|| {
                classes.push(ClassScore {
                    class_id: c.owner.class,
                    label: c.owner.label.clone(),
                    metadata: c.owner.metadata.clone(),
                    score: c.score,
                    support: 0,
                    evidence: None,
                });
                classes.len() - 1
            });
            let class = &mut classes[at];
            class.score = class.score.max(c.score);
            class.support += 1;
            let stronger = match (&class.evidence, &c.evidence) {
                (None, Some(_)) => true,
                (Some(have), Some(new)) => new.inliers > have.inliers,
                _ => false,
            };
            if stronger {
                class.evidence = c.evidence.clone();
            }
            neighbours.push(Neighbour {
                exemplar_id: c.id,
                class_id: c.owner.class,
                label: c.owner.label,
                score: c.score,
                evidence: c.evidence,
            });
        }
        if !self.verifying() {
            classes.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        let verdict = self.decide(&classes, best_score, best_inliers);
        SearchAnswer {
            neighbours,
            classes,
            verdict,
            timings,
        }
    }

    fn decide(
        &self,
        classes: &[ClassScore],
        best_score: Option<f32>,
        best_inliers: Option<u32>,
    ) -> Verdict {
        let unknown = |margin| Verdict::Unknown {
            best_score,
            margin,
            best_inliers,
        };
        let Some(best) = classes.first() else {
            return unknown(None);
        };
        // With a single candidate class the margin is to "nothing else found" (score 0).
        let margin = best.score - classes.get(1).map_or(0.0, |c| c.score);
        let rule = &self.verdict;
        let named = if self.verifying() {
            best.evidence.as_ref().is_some_and(|e| rule.verified(e))
        } else {
            best.score >= rule.accept_score && margin >= rule.min_margin
        };
        if named {
            Verdict::Match {
                class_id: best.class_id,
                label: best.label.clone(),
                score: best.score,
                margin,
                evidence: best.evidence.clone(),
            }
        } else {
            unknown(Some(margin))
        }
    }
}
