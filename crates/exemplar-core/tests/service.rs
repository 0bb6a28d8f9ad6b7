//! The catalogue service's own logic over the in-memory store and exact index (feature
//! `testing`), with a stand-in feature extractor; the service over the real SQLite store
//! and HNSW index is tested in exemplar-store and through HTTP in exemplar-server.

use exemplar_core::catalogue::{CatalogueStore, Metadata};
use exemplar_core::photos::PhotoStore;
use exemplar_core::service::{Catalogue, ServiceError, TwoStage, Verdict};
use exemplar_core::testing::{
    add_photo_classes, nth_photo, text_catalogue, text_upload, ExactIndex, ItemVerifier,
    MemoryPhotos, MemoryStore,
};
use exemplar_core::RefitPolicy;
use exemplar_core::{EarlyStop, PooledFeature};
use std::sync::Arc;

/// A service on `store` (clones share it: a service restarted on the same catalogue).
async fn catalogue(store: &MemoryStore, index: ExactIndex) -> Catalogue<MemoryStore, ExactIndex> {
    text_catalogue(store.clone(), index)
}

fn fresh_index() -> ExactIndex {
    ExactIndex::default()
}

#[tokio::test]
async fn added_classes_are_searchable_at_once_and_deletes_take_effect_at_once() {
    let store = MemoryStore::default();
    let cat = catalogue(&store, fresh_index()).await;
    let cd: Metadata = [("format".to_string(), "CD".to_string())].into();
    let (abbey, outcomes) = cat
        .add_class(
            "Abbey Road",
            &cd,
            &[
                text_upload("item-1"),
                text_upload("item-1/shot-1"),
                text_upload("item-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes.iter().filter(|o| o.duplicate).count(),
        1,
        "same bytes stored once"
    );
    let (help, _) = cat
        .add_class("Help!", &Metadata::new(), &[text_upload("item-2")])
        .await
        .unwrap();

    let answer = cat
        .search(&text_upload("item-1/shot-2"), 5, &Metadata::new())
        .await
        .unwrap();
    assert_eq!(answer.classes[0].class_id, abbey.id);
    assert_eq!(answer.classes[0].support, 2);
    assert!(matches!(answer.verdict, Verdict::Match { class_id, .. } if class_id == abbey.id));

    // Filters keep only matching classes.
    let only_cd = cat.search(&text_upload("item-2"), 5, &cd).await.unwrap();
    assert!(only_cd.classes.iter().all(|c| c.class_id == abbey.id));

    // Something far from everything is unknown.
    let stranger = cat
        .search(&text_upload("item-9"), 5, &Metadata::new())
        .await
        .unwrap();
    assert!(
        matches!(stranger.verdict, Verdict::Unknown { .. }),
        "{:?}",
        stranger.verdict
    );

    cat.delete_class(help.id).await.unwrap();
    let after = cat
        .search(&text_upload("item-2"), 5, &Metadata::new())
        .await
        .unwrap();
    assert!(after.neighbours.iter().all(|n| n.class_id != help.id));
    let first = outcomes[0].id;
    cat.delete_exemplar(first).await.unwrap();
    let after = cat
        .search(&text_upload("item-1"), 5, &Metadata::new())
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
    let store = MemoryStore::default();
    let cat = catalogue(&store, fresh_index()).await;
    fn kind<T>(r: Result<T, ServiceError>) -> &'static str {
        match r {
            Err(ServiceError::BadRequest { kind, .. }) => kind,
            Err(other) => panic!("expected a bad request, got {other}"),
            Ok(_) => panic!("expected a bad request, got success"),
        }
    }
    let none = Metadata::new();
    assert_eq!(
        kind(cat.add_class("", &none, &[text_upload("item-1")]).await),
        "empty_label"
    );
    assert_eq!(
        kind(
            cat.add_class(&"x".repeat(201), &none, &[text_upload("item-1")])
                .await
        ),
        "label_too_long"
    );
    assert_eq!(kind(cat.add_class("A", &none, &[]).await), "no_image");
    // One corrupt image among good ones: nothing is stored.
    let err = cat
        .add_class("A", &none, &[text_upload("item-1"), text_upload("garbage")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("image 2 (garbage.jpg)"), "{err}");
    assert!(cat
        .store()
        .list_classes(0, 10, &Default::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(cat.indexed(), 0);
    assert_eq!(
        kind(cat.search(&text_upload("item-1"), 0, &none).await),
        "bad_k"
    );
    assert!(matches!(
        cat.add_exemplars(77, &[text_upload("item-1")]).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn two_stages_name_only_verified_classes_and_old_exemplars_gain_local_features() {
    let store = MemoryStore::default();
    // Stored by a global-only service: no local features.
    let (old, _) = catalogue(&store, fresh_index())
        .await
        .add_class("Old", &Metadata::new(), &[text_upload("item-3")])
        .await
        .unwrap();
    let verifying = |index| {
        let store = store.clone();
        async move {
            let two_stage = TwoStage {
                shortlist: 50,
                centre_view: None,
                early_stop: None,
            };
            catalogue(&store, index)
                .await
                .with_verifier(Arc::new(ItemVerifier), two_stage)
        }
    };
    let cat = verifying(fresh_index()).await;
    cat.catch_up(0).await.unwrap();
    let (abbey, _) = cat
        .add_class("Abbey Road", &Metadata::new(), &[text_upload("item-1")])
        .await
        .unwrap();
    cat.add_class("Help!", &Metadata::new(), &[text_upload("item-2")])
        .await
        .unwrap();

    let answer = cat
        .search(&text_upload("item-1/shot-2"), 3, &Metadata::new())
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
        .search(&text_upload("item-3"), 3, &Metadata::new())
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
        .add_exemplars(old.id, &[text_upload("item-3")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    let answer = cat
        .search(&text_upload("item-3"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(
        matches!(answer.verdict, Verdict::Match { class_id, .. } if class_id == old.id),
        "{:?}",
        answer.verdict
    );

    // Stopping early: once a chunk holds settling evidence, later candidates stay
    // unverified (and keep their global order).
    let hasty = catalogue(&store, fresh_index()).await.with_verifier(
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
        .search(&text_upload("item-1/shot-2"), 3, &Metadata::new())
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
        .search(&text_upload("item-9"), 3, &Metadata::new())
        .await
        .unwrap();
    assert!(matches!(stranger.verdict, Verdict::Unknown { .. }));
    assert_eq!(stranger.neighbours.len(), 3);
}

#[tokio::test]
async fn a_refit_reprojects_every_exemplar_and_swaps_while_searches_go_on() {
    let store = MemoryStore::default();
    let cat = catalogue(&store, fresh_index())
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
    let mut classes = add_photo_classes(&cat, 40).await;
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
async fn an_index_that_asks_for_compaction_is_rebuilt_without_its_deleted_entries() {
    let store = MemoryStore::default();
    let cat = catalogue(&store, fresh_index()).await;
    let none = Metadata::new();
    let classes = add_photo_classes(&cat, 10).await;
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
    assert!(cat.compact_if_due().await.unwrap().is_none());
    for (i, class) in classes.iter().enumerate().skip(3) {
        let answer = cat.search(&nth_photo(i), 1, &none).await.unwrap();
        assert_eq!(answer.neighbours[0].class_id, *class);
    }
}

fn sha(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn photos_are_kept_once_per_content_and_collected_when_no_exemplar_refers_to_them() {
    let store = MemoryStore::default();
    let photos = MemoryPhotos::default();
    let cat = catalogue(&store, fresh_index())
        .await
        .with_photos(Arc::new(photos.clone()), true);
    let (a, outcomes) = cat
        .add_class(
            "A",
            &Metadata::new(),
            &[text_upload("item-1"), text_upload("item-1/shot-1")],
        )
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.photo_kept));
    // The same bytes in another class: one photo.
    let (b, _) = cat
        .add_class("B", &Metadata::new(), &[text_upload("item-1")])
        .await
        .unwrap();
    let mut both = vec![sha("item-1"), sha("item-1/shot-1")];
    both.sort();
    assert_eq!(photos.hashes(), both);
    let (_, exemplars) = store.class(a.id).await.unwrap().unwrap();
    assert!(exemplars.iter().all(|e| e.photo_kept));

    // Class B still refers to item-1 when A's copy goes.
    let a_item_1 = exemplars
        .iter()
        .find(|e| e.sha256 == sha("item-1"))
        .unwrap();
    cat.delete_exemplar(a_item_1.id).await.unwrap();
    assert_eq!(photos.hashes(), both);
    cat.delete_class(b.id).await.unwrap();
    assert_eq!(photos.hashes(), vec![sha("item-1/shot-1")]);
    cat.delete_class(a.id).await.unwrap();
    assert!(photos.hashes().is_empty());
}

#[tokio::test]
async fn without_keeping_photos_exemplars_say_so_and_a_later_upload_adds_the_photo() {
    let store = MemoryStore::default();
    let photos = MemoryPhotos::default();
    let features_only = catalogue(&store, fresh_index())
        .await
        .with_photos(Arc::new(photos.clone()), false);
    let (class, outcomes) = features_only
        .add_class("A", &Metadata::new(), &[text_upload("item-1")])
        .await
        .unwrap();
    assert!(!outcomes[0].photo_kept);
    assert!(photos.hashes().is_empty());
    assert!(
        !store
            .exemplar(outcomes[0].id)
            .await
            .unwrap()
            .unwrap()
            .photo_kept
    );

    // Restarted keeping photos: sending the same photo again keeps it, same exemplar.
    let keeping = catalogue(&store, fresh_index())
        .await
        .with_photos(Arc::new(photos.clone()), true);
    let again = keeping
        .add_exemplars(class.id, &[text_upload("item-1")])
        .await
        .unwrap();
    assert!(again[0].duplicate && again[0].photo_kept);
    assert_eq!(again[0].id, outcomes[0].id);
    assert!(
        store
            .exemplar(outcomes[0].id)
            .await
            .unwrap()
            .unwrap()
            .photo_kept
    );
    assert_eq!(photos.hashes(), vec![sha("item-1")]);
}

#[tokio::test]
async fn photos_of_failed_writes_and_of_crashes_are_collected_and_referenced_ones_kept() {
    let store = MemoryStore::default();
    let photos = MemoryPhotos::default();
    let cat = catalogue(&store, fresh_index())
        .await
        .with_photos(Arc::new(photos.clone()), true);
    cat.add_class("A", &Metadata::new(), &[text_upload("item-1")])
        .await
        .unwrap();
    // The photo is written before the commit, which fails: no such class.
    let failed = cat.add_exemplars(999, &[text_upload("item-2")]).await;
    assert!(matches!(failed, Err(ServiceError::NotFound(_))));
    assert_eq!(photos.hashes().len(), 2);
    // A crash between a photo's write and its commit leaves one behind too.
    photos.put(&sha("item-3"), b"item-3").unwrap();

    let removed = cat.collect_all_photos().await.unwrap();
    assert_eq!(removed, 2);
    assert_eq!(photos.hashes(), vec![sha("item-1")]);
}

#[tokio::test]
async fn the_photos_of_a_request_dropped_before_its_commit_are_collected() {
    let store = MemoryStore::default();
    let photos = MemoryPhotos::default();
    let cat = Arc::new(
        catalogue(&store, fresh_index())
            .await
            .with_photos(Arc::new(photos.clone()), true),
    );
    let slow_commit = store.hold_writes().await;
    let adding = {
        let cat = cat.clone();
        tokio::spawn(async move {
            cat.add_class("A", &Metadata::new(), &[text_upload("item-1")])
                .await
        })
    };
    // The photo is kept, the commit waits: the client goes away.
    while photos.hashes().is_empty() {
        tokio::task::yield_now().await;
    }
    adding.abort();
    assert!(adding.await.unwrap_err().is_cancelled());
    drop(slow_commit);
    assert_eq!(store.exemplar_count().await.unwrap(), 0);
    assert_eq!(photos.hashes(), vec![sha("item-1")]);
    assert_eq!(cat.collect_photos(Vec::new()).await.unwrap(), 1);
    assert!(photos.hashes().is_empty());
}
