//! The catalogue service over the real SQLite store and HNSW index, with a stand-in
//! feature extractor (the real CNN is tested in exemplar-embed).

use exemplar_core::catalogue::{CatalogueStore, Metadata};
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::service::{
    Catalogue, Limits, ServiceError, TwoStage, Upload, Verdict, VerdictRule,
};
use exemplar_core::RefitPolicy;
use exemplar_core::{
    l2_normalize, EarlyStop, Evidence, ExtractError, Extracted, FeatureExtractor, ImageInput,
    ModelInfo, PooledFeature, Projection, Verifier,
};
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;
use std::sync::Arc;

const DIM: usize = 16;

/// "Images" are text: `item-N` (optionally `item-N/shot-M`) maps to a feature near
/// direction N, so different shots of one item are close and items are far apart;
/// anything not starting with `item-` is a corrupt image.
struct TextFeatures(ModelInfo);

impl FeatureExtractor for TextFeatures {
    fn info(&self) -> &ModelInfo {
        &self.0
    }
    fn makes_local_features(&self) -> bool {
        true
    }
    fn extract(&self, images: &[ImageInput<'_>]) -> Vec<Result<Extracted, ExtractError>> {
        images
            .iter()
            .map(|input| {
                let text = std::str::from_utf8(input.bytes)
                    .map_err(|_| ExtractError::CorruptImage("binary".into()))?;
                let rest = text
                    .strip_prefix("item-")
                    .ok_or_else(|| ExtractError::CorruptImage("not an item".into()))?;
                let (item, shot) = rest.split_once("/shot-").unwrap_or((rest, "0"));
                let item: usize = item
                    .parse()
                    .map_err(|_| ExtractError::CorruptImage("bad item".into()))?;
                let shot: usize = shot.parse().unwrap_or(0);
                let mut v = vec![0.01f32; DIM];
                v[item % DIM] = 1.0;
                v[(item + 1 + shot) % DIM] += 0.05 * shot as f32;
                l2_normalize(&mut v);
                Ok(Extracted {
                    pooled: PooledFeature(v),
                    // The "local features" are the item number.
                    local: input.local.wanted().then(|| item.to_string().into_bytes()),
                })
            })
            .collect()
    }
}

fn upload(text: &str) -> Upload {
    Upload {
        crop: None,
        bytes: text.as_bytes().to_vec(),
        name: Some(format!("{text}.jpg")),
    }
}

async fn catalogue(path: &std::path::Path, index: AnnIndex) -> Catalogue<SqliteStore, AnnIndex> {
    let extractor = Arc::new(TextFeatures(ModelInfo {
        id: "text".into(),
        feature_dim: DIM,
    }));
    let store = SqliteStore::open(path).await.unwrap();
    // An identity-like projection keeps the test's geometry readable.
    let projection = Projection::random_orthogonal(DIM, DIM, 0);
    Catalogue::new(
        store,
        index,
        EmbedQueue::start(extractor, 64, 8),
        projection,
        "text".into(),
        Limits::default(),
        VerdictRule::default(),
    )
}

fn fresh_index() -> AnnIndex {
    AnnIndex::new(DIM, IndexParams::default(), 100)
}

#[tokio::test]
async fn added_classes_are_searchable_at_once_and_deletes_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(&dir.path().join("c.sqlite"), fresh_index()).await;
    let cd: Metadata = [("format".to_string(), "CD".to_string())].into();
    let (abbey, outcomes) = cat
        .add_class(
            "Abbey Road",
            &cd,
            &[upload("item-1"), upload("item-1/shot-1"), upload("item-1")],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes.iter().filter(|o| o.duplicate).count(),
        1,
        "same bytes stored once"
    );
    let (help, _) = cat
        .add_class("Help!", &Metadata::new(), &[upload("item-2")])
        .await
        .unwrap();

    let answer = cat
        .search(&upload("item-1/shot-2"), 5, &Metadata::new())
        .await
        .unwrap();
    assert_eq!(answer.classes[0].class_id, abbey.id);
    assert_eq!(answer.classes[0].support, 2);
    assert!(matches!(answer.verdict, Verdict::Match { class_id, .. } if class_id == abbey.id));

    // Filters keep only matching classes.
    let only_cd = cat.search(&upload("item-2"), 5, &cd).await.unwrap();
    assert!(only_cd.classes.iter().all(|c| c.class_id == abbey.id));

    // Something far from everything is unknown.
    let stranger = cat
        .search(&upload("item-9"), 5, &Metadata::new())
        .await
        .unwrap();
    assert!(
        matches!(stranger.verdict, Verdict::Unknown { .. }),
        "{:?}",
        stranger.verdict
    );

    cat.delete_class(help.id).await.unwrap();
    let after = cat
        .search(&upload("item-2"), 5, &Metadata::new())
        .await
        .unwrap();
    assert!(after.neighbours.iter().all(|n| n.class_id != help.id));
    let first = outcomes[0].id;
    cat.delete_exemplar(first).await.unwrap();
    let after = cat
        .search(&upload("item-1"), 5, &Metadata::new())
        .await
        .unwrap();
    assert!(after.neighbours.iter().all(|n| n.exemplar_id != first));
    assert!(matches!(
        cat.delete_exemplar(first).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn bad_requests_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(&dir.path().join("c.sqlite"), fresh_index()).await;
    fn kind<T>(r: Result<T, ServiceError>) -> &'static str {
        match r {
            Err(ServiceError::BadRequest { kind, .. }) => kind,
            Err(other) => panic!("expected a bad request, got {other}"),
            Ok(_) => panic!("expected a bad request, got success"),
        }
    }
    let none = Metadata::new();
    assert_eq!(
        kind(cat.add_class("", &none, &[upload("item-1")]).await),
        "empty_label"
    );
    assert_eq!(
        kind(
            cat.add_class(&"x".repeat(201), &none, &[upload("item-1")])
                .await
        ),
        "label_too_long"
    );
    assert_eq!(kind(cat.add_class("A", &none, &[]).await), "no_image");
    // One corrupt image among good ones: nothing is stored.
    let err = cat
        .add_class("A", &none, &[upload("item-1"), upload("garbage")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("image 2 (garbage.jpg)"), "{err}");
    assert!(cat.store().list_classes(0, 10).await.unwrap().is_empty());
    assert_eq!(cat.indexed(), 0);
    assert_eq!(kind(cat.search(&upload("item-1"), 0, &none).await), "bad_k");
    assert!(matches!(
        cat.add_exemplars(77, &[upload("item-1")]).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_restarted_index_catches_up_from_its_dump_and_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let dump = dir.path().join("index");
    let (a, b, c, watermark) = {
        let cat = catalogue(&db, fresh_index()).await;
        let (a, _) = cat
            .add_class("A", &Metadata::new(), &[upload("item-3")])
            .await
            .unwrap();
        let (b, _) = cat
            .add_class("B", &Metadata::new(), &[upload("item-4")])
            .await
            .unwrap();
        // Replaying on a live index adds nothing twice; it returns the log's head.
        assert_eq!(cat.catch_up(0).await.unwrap(), 2);
        assert_eq!(cat.indexed(), 2);
        let watermark = cat
            .checkpoint(|index, head, projection, _words| {
                index
                    .save(&dump, head as u64, projection.version())
                    .unwrap();
                head
            })
            .await
            .unwrap();
        // More happens after the dump, then the process dies.
        let (c, _) = cat
            .add_class("C", &Metadata::new(), &[upload("item-5")])
            .await
            .unwrap();
        cat.delete_class(b.id).await.unwrap();
        (a, b, c, watermark)
    };
    let (index, meta) = AnnIndex::load(&dump, DIM).unwrap();
    assert_eq!(meta.watermark, watermark as u64);
    assert_eq!(index.len(), 2, "the dump is stale: it has B and not C");
    let cat = catalogue(&db, index).await;
    cat.catch_up(meta.watermark as i64).await.unwrap();
    assert_eq!(cat.indexed(), 2);
    for (probe, class) in [("item-3", a.id), ("item-5", c.id)] {
        let answer = cat
            .search(&upload(probe), 1, &Metadata::new())
            .await
            .unwrap();
        assert_eq!(answer.neighbours[0].class_id, class, "{probe}");
    }
    let answer = cat
        .search(&upload("item-4"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(
        answer.neighbours.iter().all(|n| n.class_id != b.id),
        "deleted class is gone"
    );

    // The same catalogue rebuilt from nothing: replaying the whole log.
    drop(cat);
    let cat = catalogue(&db, fresh_index()).await;
    cat.catch_up(0).await.unwrap();
    assert_eq!(cat.indexed(), 2);
}

/// "Verifies" by comparing the stand-in local features (item numbers): the same item
/// shows 60 inliers and an outline, another item 5 stray ones.
struct ItemVerifier;

impl Verifier for ItemVerifier {
    fn verify(&self, query: &[u8], references: &[&[u8]]) -> Vec<Evidence> {
        references
            .iter()
            .map(|r| match *r == query {
                true => Evidence {
                    inliers: 60,
                    matches: 80,
                    coverage: 0.8,
                    quadrilateral: Some([[1.0, 2.0], [9.0, 2.0], [9.0, 8.0], [1.0, 8.0]]),
                    in_frame: 1.0,
                    centred: true,
                },
                false => Evidence {
                    inliers: 5,
                    matches: 9,
                    coverage: 0.01,
                    ..Evidence::default()
                },
            })
            .collect()
    }
}

#[tokio::test]
async fn two_stages_name_only_verified_classes_and_old_exemplars_gain_local_features() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    // Stored by a global-only service: no local features.
    let (old, _) = catalogue(&db, fresh_index())
        .await
        .add_class("Old", &Metadata::new(), &[upload("item-3")])
        .await
        .unwrap();
    let verifying = |index| async move {
        let two_stage = TwoStage {
            shortlist: 50,
            centre_view: None,
            early_stop: None,
        };
        catalogue(&db, index)
            .await
            .with_verifier(Arc::new(ItemVerifier), two_stage)
    };
    let cat = verifying(fresh_index()).await;
    cat.catch_up(0).await.unwrap();
    let (abbey, _) = cat
        .add_class("Abbey Road", &Metadata::new(), &[upload("item-1")])
        .await
        .unwrap();
    cat.add_class("Help!", &Metadata::new(), &[upload("item-2")])
        .await
        .unwrap();

    let answer = cat
        .search(&upload("item-1/shot-2"), 3, &Metadata::new())
        .await
        .unwrap();
    let Verdict::Match {
        class_id,
        evidence: Some(evidence),
        ..
    } = &answer.verdict
    else {
        panic!("verified match expected: {:?}", answer.verdict);
    };
    assert_eq!(*class_id, abbey.id);
    assert_eq!(evidence.inliers, 60);
    assert!(evidence.quadrilateral.is_some());
    assert_eq!(answer.neighbours[0].evidence.as_ref().unwrap().inliers, 60);
    assert_eq!(answer.classes[0].class_id, abbey.id);
    assert!(answer.timings.verify_ms > 0.0);

    // The old exemplar is the global twin of the query, but without local features it
    // cannot be verified: `unknown`, not a guess.
    let answer = cat
        .search(&upload("item-3"), 3, &Metadata::new())
        .await
        .unwrap();
    assert_eq!(answer.neighbours[0].class_id, old.id);
    assert_eq!(answer.neighbours[0].evidence, None);
    assert!(
        matches!(
            answer.verdict,
            Verdict::Unknown {
                best_inliers: Some(5),
                ..
            }
        ),
        "{:?}",
        answer.verdict
    );
    // Sending the same photo again fills its local features in.
    let again = cat
        .add_exemplars(old.id, &[upload("item-3")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    let answer = cat
        .search(&upload("item-3"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(
        matches!(answer.verdict, Verdict::Match { class_id, .. } if class_id == old.id),
        "{:?}",
        answer.verdict
    );

    // Stopping early: once a chunk holds settling evidence, later candidates stay
    // unverified (and keep their global order).
    let hasty = catalogue(&dir.path().join("c.sqlite"), fresh_index())
        .await
        .with_verifier(
            Arc::new(ItemVerifier),
            TwoStage {
                shortlist: 50,
                centre_view: None,
                early_stop: Some(EarlyStop {
                    chunk: 1,
                    inliers: 50,
                    coverage: 0.5,
                }),
            },
        );
    hasty.catch_up(0).await.unwrap();
    let answer = hasty
        .search(&upload("item-1/shot-2"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(matches!(answer.verdict, Verdict::Match { class_id, .. } if class_id == abbey.id));
    assert_eq!(answer.neighbours[0].evidence.as_ref().unwrap().inliers, 60);
    assert_eq!(
        answer.neighbours[1].evidence, None,
        "{:?}",
        answer.neighbours
    );
    drop(hasty);

    // A photo of nothing in the catalogue is unknown, with what was found.
    let stranger = cat
        .search(&upload("item-9"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(matches!(stranger.verdict, Verdict::Unknown { .. }));
    assert_eq!(stranger.neighbours.len(), 3);
}

/// A distinct photo per number: item directions repeat every DIM, shots tell them apart.
fn nth_photo(i: usize) -> Upload {
    upload(&format!("item-{}/shot-{}", i % DIM, i / DIM))
}

#[tokio::test]
async fn a_refit_reprojects_every_exemplar_and_swaps_while_searches_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let cat = catalogue(&db, fresh_index())
        .await
        .with_refit_policy(RefitPolicy {
            min_exemplars: 40,
            ..RefitPolicy::default()
        });
    let none = Metadata::new();
    assert!(matches!(
        cat.refit_now().await,
        Err(ServiceError::Conflict {
            kind: "too_few_exemplars",
            ..
        })
    ));
    let mut classes = Vec::new();
    for i in 0..40 {
        let (class, _) = cat
            .add_class(&format!("c{i}"), &none, &[nth_photo(i)])
            .await
            .unwrap();
        classes.push(class.id);
    }
    let before = cat.projection().version().to_string();
    assert!(
        cat.refit_if_due().await.unwrap().is_some(),
        "40 exemplars reach the policy"
    );
    let first = cat.projection().version().to_string();
    assert_ne!(first, before);
    assert!(
        cat.refit_if_due().await.unwrap().is_none(),
        "not grown since"
    );

    // A refit on demand while searches and writes keep coming.
    let (rebuilt, during) = tokio::join!(cat.refit_now(), async {
        let mut added = Vec::new();
        for i in 40..48 {
            let answer = cat.search(&nth_photo(i - 40), 1, &none).await.unwrap();
            assert_eq!(answer.neighbours[0].class_id, classes[i - 40]);
            let (class, _) = cat
                .add_class(&format!("c{i}"), &none, &[nth_photo(i)])
                .await
                .unwrap();
            added.push(class.id);
        }
        added
    });
    let rebuilt = rebuilt.unwrap();
    assert!(rebuilt.refitted);
    classes.extend(during);
    assert_eq!(
        cat.indexed(),
        48,
        "writes during the refit are in the new index"
    );
    let current = cat.projection().version().to_string();
    assert_eq!(rebuilt.projection, current);

    // Every exemplar is found by its own photo, and is stored in the current space.
    for (i, class) in classes.iter().enumerate() {
        let answer = cat.search(&nth_photo(i), 1, &none).await.unwrap();
        assert_eq!(answer.neighbours[0].class_id, *class, "photo {i}");
        assert!(answer.neighbours[0].score > 0.999, "photo {i}");
        let (_, exemplars) = cat.store().class(*class).await.unwrap().unwrap();
        assert_eq!(exemplars[0].projection, current, "class {class}");
    }
    // The store keeps the projection: a restart uses it.
    assert_eq!(
        cat.store().projection().await.unwrap().unwrap().version(),
        current
    );
    let stored = cat.store().descriptors(&[1]).await.unwrap();
    let raw = cat.store().raw_features(Some(&[1])).await.unwrap();
    let reprojected = cat
        .projection()
        .apply(&PooledFeature(raw[0].1.clone()))
        .unwrap();
    assert_eq!(stored[0].1, reprojected);
}

#[tokio::test]
async fn compaction_drops_deleted_exemplars_from_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(&dir.path().join("c.sqlite"), fresh_index()).await;
    let none = Metadata::new();
    let mut classes = Vec::new();
    for i in 0..10 {
        let (class, _) = cat
            .add_class(&format!("c{i}"), &none, &[nth_photo(i)])
            .await
            .unwrap();
        classes.push(class.id);
    }
    assert!(
        cat.compact_if_due().await.unwrap().is_none(),
        "nothing deleted"
    );
    for class in &classes[..3] {
        cat.delete_class(*class).await.unwrap();
    }
    let rebuilt = cat
        .compact_if_due()
        .await
        .unwrap()
        .expect("3 of 10 deleted");
    assert!(!rebuilt.refitted);
    assert_eq!(rebuilt.exemplars, 7);
    assert!(!cat.read_space().index.needs_compaction());
    for (i, class) in classes.iter().enumerate().skip(3) {
        let answer = cat.search(&nth_photo(i), 1, &none).await.unwrap();
        assert_eq!(answer.neighbours[0].class_id, *class);
    }
}
