//! The store suite: every test runs on a SQLite file and on a throwaway PostgreSQL
//! server; then the catalogue service on top of SQLite.

mod service;

use exemplar_core::catalogue::{
    CatalogueStore, Change, ClassFilter, ClassRecord, ExemplarHash, Metadata, NewExemplar,
    StoreError, Stored,
};
use exemplar_core::reindex::ReindexStore;
use exemplar_core::unknowns::UnknownStore;
use exemplar_store::testing::TempPostgres;
use exemplar_store::{PgStore, SqliteStore};

/// Where a test's catalogue lives; `open` may be called again to reopen it.
trait Backend: Send + Sync + 'static {
    type Store: CatalogueStore + ReindexStore + UnknownStore;
    async fn open(&self) -> Self::Store;
}

struct Sqlite(tempfile::TempDir);

impl Backend for Sqlite {
    type Store = SqliteStore;
    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0.path().join("c.sqlite"))
            .await
            .unwrap()
    }
}

struct Postgres {
    _server: TempPostgres,
    url: String,
}

impl Backend for Postgres {
    type Store = PgStore;
    async fn open(&self) -> PgStore {
        PgStore::connect(&self.url).await.unwrap()
    }
}

/// Runs each named test body once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Sqlite(tempfile::tempdir().unwrap())).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let server = exemplar_store::testing::TempPostgres::start();
                    let url = server.database();
                    super::$name(super::Postgres { _server: server, url }).await
                }
            )*
        }
    };
}

on_both_backends!(
    classes_exemplars_and_the_change_log_survive_a_reopen,
    bad_writes_leave_nothing_behind,
    classes_page_in_id_order,
    local_features_are_added_when_missing_and_replaced_when_of_another_format,
    concurrent_writes_to_existing_classes_all_succeed,
    kept_photos_are_recorded_and_gained_by_duplicates,
    a_reindex_stages_resumes_and_switches_whole_or_not_at_all,
    class_listing_filters_by_label_text_and_metadata_and_pages_within_the_filter,
    unknowns_inbox_is_bounded_by_count_and_age_and_keeps_the_photo,
    two_servers_writing_at_once_lose_and_duplicate_nothing,
);

fn exemplar(sha: &str, x: f32) -> NewExemplar {
    NewExemplar {
        sha256: sha.into(),
        original_name: Some(format!("{sha}.jpg")),
        raw_feature: vec![x; 4],
        descriptor: vec![x, 1.0 - x],
        model: "m".into(),
        projection: "p".into(),
        local_features: None,
        photo_kept: false,
    }
}

fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn classes_exemplars_and_the_change_log_survive_a_reopen<B: Backend>(backend: B) {
    let store = backend.open().await;

    let (class, stored) = store
        .create_class(
            "Abbey Road",
            &metadata(&[("format", "CD")]),
            &[exemplar("a", 0.1), exemplar("b", 0.2), exemplar("a", 0.1)],
        )
        .await
        .unwrap();
    let (first, second) = match (stored[0], stored[1]) {
        (Stored::Added(a), Stored::Added(b)) => (a, b),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        stored[2],
        Stored::Duplicate(first),
        "same bytes twice in a class are stored once"
    );
    assert_eq!(class.exemplars, 2);
    assert_eq!(class.metadata["format"], "CD");

    let (other, _) = store
        .create_class("Help!", &Metadata::new(), &[exemplar("a", 0.3)])
        .await
        .unwrap();
    assert!(store.delete_exemplar(second).await.unwrap());
    assert!(
        !store.delete_exemplar(second).await.unwrap(),
        "second delete is a no-op"
    );
    drop(store);

    let store = backend.open().await;
    let (record, exemplars) = store.class(class.id).await.unwrap().unwrap();
    assert_eq!(record.label, "Abbey Road");
    assert_eq!(
        exemplars.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![first]
    );
    let changes = store.changes_since(0).await.unwrap();
    assert_eq!(changes.len(), 4);
    assert!(matches!(changes[3], Change::ExemplarRemoved { exemplar, .. } if exemplar == second));
    let Change::ExemplarAdded { seq, .. } = changes[2] else {
        panic!()
    };
    assert_eq!(store.changes_since(seq).await.unwrap().len(), 1);

    let descriptors = store.descriptors(&[first, second, 999]).await.unwrap();
    assert_eq!(descriptors, vec![(first, vec![0.1, 0.9])]);

    let removed = store.delete_class(other.id).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(store.class(other.id).await.unwrap().is_none());
    assert!(matches!(
        store.delete_class(other.id).await,
        Err(StoreError::ClassNotFound(_))
    ));
}

async fn bad_writes_leave_nothing_behind<B: Backend>(backend: B) {
    let store = backend.open().await;
    assert!(matches!(
        store
            .create_class("  ", &Metadata::new(), &[exemplar("a", 0.1)])
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.add_exemplars(42, &[exemplar("a", 0.1)]).await,
        Err(StoreError::ClassNotFound(42))
    ));
    assert!(store.changes_since(0).await.unwrap().is_empty());
    assert!(store
        .list_classes(0, 10, &Default::default())
        .await
        .unwrap()
        .is_empty());
}

async fn classes_page_in_id_order<B: Backend>(backend: B) {
    let store = backend.open().await;
    for i in 0..5 {
        store
            .create_class(&format!("item {i}"), &Metadata::new(), &[])
            .await
            .unwrap();
    }
    let page1 = store.list_classes(0, 2, &Default::default()).await.unwrap();
    let page2 = store
        .list_classes(page1[1].id, 2, &Default::default())
        .await
        .unwrap();
    let page3 = store
        .list_classes(page2[1].id, 2, &Default::default())
        .await
        .unwrap();
    let labels: Vec<String> = [page1, page2, page3]
        .concat()
        .into_iter()
        .map(|c| c.label)
        .collect();
    assert_eq!(
        labels,
        (0..5).map(|i| format!("item {i}")).collect::<Vec<_>>()
    );
}

async fn local_features_are_added_when_missing_and_replaced_when_of_another_format<B: Backend>(
    backend: B,
) {
    let store = backend.open().await;
    let with = |sha: &str, local: Option<&[u8]>| NewExemplar {
        local_features: local.map(<[u8]>::to_vec),
        ..exemplar(sha, 0.5)
    };
    let (class, stored) = store
        .create_class("Cover", &Metadata::new(), &[with("a", None)])
        .await
        .unwrap();
    let Stored::Added(id) = stored[0] else {
        panic!("{stored:?}")
    };
    let format = |hashes: Vec<ExemplarHash>| hashes[0].local_format.clone();
    assert_eq!(format(store.exemplar_hashes().await.unwrap()), None);
    // The same photo again, now with (ORB) features: added.
    store
        .add_exemplars(class.id, &[with("a", Some(b"EXL1orb-bytes"))])
        .await
        .unwrap();
    assert_eq!(
        format(store.exemplar_hashes().await.unwrap()),
        Some(b"EXL1".to_vec())
    );
    // Features of the same format are kept (an acknowledged write is not rewritten)...
    store
        .add_exemplars(class.id, &[with("a", Some(b"EXL1other"))])
        .await
        .unwrap();
    let local = store.local_features(&[id]).await.unwrap();
    assert_eq!(local, vec![(id, b"EXL1orb-bytes".to_vec())]);
    // ...features of another format replace them.
    store
        .add_exemplars(class.id, &[with("a", Some(b"EXS1sift-bytes"))])
        .await
        .unwrap();
    let local = store.local_features(&[id]).await.unwrap();
    assert_eq!(local, vec![(id, b"EXS1sift-bytes".to_vec())]);
}

/// Several writers at once (an import's parallel jobs, concurrent uploads) each wait for
/// the write lock: none fails with "database is locked".
async fn concurrent_writes_to_existing_classes_all_succeed<B: Backend>(backend: B) {
    let store = std::sync::Arc::new(backend.open().await);
    let mut classes = Vec::new();
    for c in 0..4 {
        let (class, _) = store
            .create_class(
                &format!("class {c}"),
                &Metadata::new(),
                &[exemplar(&format!("{c}"), 0.5)],
            )
            .await
            .unwrap();
        classes.push(class.id);
    }
    let mut writers = tokio::task::JoinSet::new();
    for (c, class) in classes.into_iter().enumerate() {
        let store = store.clone();
        writers.spawn(async move {
            for i in 0..25 {
                let sha = format!("{c}-{i}");
                store.add_exemplars(class, &[exemplar(&sha, 0.5)]).await?;
            }
            Ok::<_, StoreError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(store.exemplar_hashes().await.unwrap().len(), 4 + 4 * 25);
}

/// Records two exemplars, "x" with its photo kept and "y" without, then "y" again with
/// its photo: it gains it. Returns their ids.
async fn record_kept_photos<S: CatalogueStore>(store: &S) -> (i64, i64) {
    let kept = |sha: &str| NewExemplar {
        photo_kept: true,
        ..exemplar(sha, 0.5)
    };
    let (a, stored) = store
        .create_class("A", &Metadata::new(), &[kept("x"), exemplar("y", 0.2)])
        .await
        .unwrap();
    let (Stored::Added(x), Stored::Added(y)) = (stored[0], stored[1]) else {
        panic!("{stored:?}")
    };
    assert!(store.exemplar(x).await.unwrap().unwrap().photo_kept);
    assert!(!store.exemplar(y).await.unwrap().unwrap().photo_kept);
    let hashes = ["x".to_string(), "y".to_string(), "z".to_string()];
    let in_use = store.photos_in_use(&hashes).await.unwrap();
    assert_eq!(in_use, ["x".to_string()].into());
    // The same bytes sent again with the photo kept: the exemplar gains it.
    let again = store.add_exemplars(a.id, &[kept("y")]).await.unwrap();
    assert_eq!(again, vec![Stored::Duplicate(y)]);
    assert!(store.exemplar(y).await.unwrap().unwrap().photo_kept);
    assert_eq!(store.photos_in_use(&hashes).await.unwrap().len(), 2);
    (x, y)
}

async fn kept_photos_are_recorded_and_gained_by_duplicates<B: Backend>(backend: B) {
    let store = backend.open().await;
    let (x, _) = record_kept_photos(&store).await;
    store.delete_exemplar(x).await.unwrap();
    let hashes = ["x".to_string(), "y".to_string()];
    assert_eq!(
        store.photos_in_use(&hashes).await.unwrap(),
        ["y".to_string()].into()
    );
}

#[tokio::test]
async fn a_consistent_sqlite_copy_counts_kept_photos() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.sqlite"))
        .await
        .unwrap();
    let (x, _) = record_kept_photos(&store).await;
    let hashes = ["x".to_string(), "y".to_string(), "z".to_string()];
    let copy_path = dir.path().join("copy.sqlite");
    store.snapshot_into(&copy_path).await.unwrap();
    store.delete_exemplar(x).await.unwrap();
    assert!(store.exemplar(x).await.unwrap().is_none());
    assert_eq!(
        store.photos_in_use(&hashes).await.unwrap(),
        ["y".to_string()].into()
    );
    // The copy is the catalogue as it was, whole.
    let copy = SqliteStore::open(&copy_path).await.unwrap();
    copy.integrity_check().await.unwrap();
    let tally = copy.tally().await.unwrap();
    assert_eq!(
        (
            tally.classes,
            tally.exemplars,
            tally.photos,
            tally.features_only
        ),
        (1, 2, 2, 0)
    );
    assert_eq!(copy.kept_photos().await.unwrap(), ["x", "y"]);
    assert_eq!(copy.models().await.unwrap(), vec![("m".to_string(), 2)]);
    assert!(
        store.snapshot_into(&copy_path).await.is_err(),
        "never over a file"
    );
}

async fn a_reindex_stages_resumes_and_switches_whole_or_not_at_all<B: Backend>(backend: B) {
    use exemplar_core::reindex::{ReindexStore, StagedFeatures};
    use exemplar_core::Projection;
    let store = backend.open().await;
    let kept = |sha: &str, x: f32| NewExemplar {
        photo_kept: true,
        ..exemplar(sha, x)
    };
    let (class, stored) = store
        .create_class(
            "A",
            &Metadata::new(),
            &[kept("a", 0.1), kept("b", 0.2), exemplar("c", 0.3)],
        )
        .await
        .unwrap();
    let ids: Vec<i64> = stored
        .iter()
        .map(|s| match s {
            Stored::Added(id) => *id,
            Stored::Duplicate(_) => panic!("{s:?}"),
        })
        .collect();
    assert_eq!(store.exemplars_without_photo().await.unwrap(), vec![ids[2]]);

    let job = store
        .begin_reindex("{\"model\":\"m2\"}", "m2")
        .await
        .unwrap();
    assert!(matches!(
        store.begin_reindex("{}", "m3").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.reindex_in_progress().await.unwrap(),
        Some(job.clone())
    );
    let todo = store.reindex_todo(job.id, 10).await.unwrap();
    assert_eq!(
        todo,
        vec![(ids[0], "a".to_string()), (ids[1], "b".to_string())]
    );
    let staged = |id: i64| StagedFeatures {
        exemplar: id,
        raw_feature: vec![id as f32; 6],
        local_features: Some(vec![7; 3]),
    };
    store
        .stage_features(job.id, &[staged(ids[0])])
        .await
        .unwrap();
    // What a restart resumes with: the exemplar not staged yet.
    assert_eq!(store.reindex_counts(job.id).await.unwrap(), (1, 2));
    assert_eq!(
        store.reindex_todo(job.id, 10).await.unwrap(),
        vec![(ids[1], "b".to_string())]
    );

    let old = store.projection().await.unwrap();
    let new = Projection::random_orthogonal(6, 2, 1);
    let all: Vec<(i64, Vec<f32>)> = ids.iter().map(|id| (*id, vec![1.0, 0.0])).collect();
    // Two live exemplars have no new features: nothing changes.
    assert!(store.switch_to_reindexed(job.id, &new, &all).await.is_err());
    assert_eq!(
        store
            .projection()
            .await
            .unwrap()
            .map(|p| p.version().to_string()),
        old.map(|p| p.version().to_string())
    );
    assert_eq!(
        store.reindex_in_progress().await.unwrap().map(|j| j.id),
        Some(job.id)
    );
    let (_, records) = store.class(class.id).await.unwrap().unwrap();
    assert!(records.iter().all(|e| e.model == "m"));

    assert!(store.delete_exemplar(ids[2]).await.unwrap());
    store
        .stage_features(job.id, &[staged(ids[1])])
        .await
        .unwrap();
    store.switch_to_reindexed(job.id, &new, &all).await.unwrap();
    let (_, records) = store.class(class.id).await.unwrap().unwrap();
    assert!(records
        .iter()
        .all(|e| e.model == "m2" && e.projection == new.version()));
    assert_eq!(
        store.raw_features(Some(&ids[..1])).await.unwrap(),
        vec![(ids[0], vec![ids[0] as f32; 6])]
    );
    assert_eq!(
        store.local_features(&ids[1..2]).await.unwrap(),
        vec![(ids[1], vec![7; 3])]
    );
    assert_eq!(
        store.projection().await.unwrap().unwrap().version(),
        new.version()
    );
    assert_eq!(store.reindex_in_progress().await.unwrap(), None);
    assert_eq!(
        store.index_spec().await.unwrap().as_deref(),
        Some("{\"model\":\"m2\"}")
    );
    assert_eq!(store.reindex_counts(job.id).await.unwrap(), (0, 2));
}

async fn class_listing_filters_by_label_text_and_metadata_and_pages_within_the_filter<
    B: Backend,
>(
    backend: B,
) {
    let store = backend.open().await;
    let meta = |format: &str| Metadata::from([("format".to_string(), format.to_string())]);
    for (label, format) in [
        ("Blue Train", "LP"),
        ("Kind of Blue", "CD"),
        ("Blue Note Sampler", "CD"),
        ("Giant Steps", "CD"),
        ("Blue Monk", "CD"),
    ] {
        store.create_class(label, &meta(format), &[]).await.unwrap();
    }
    let labels =
        |classes: Vec<ClassRecord>| classes.into_iter().map(|c| c.label).collect::<Vec<_>>();
    let blue_cds = ClassFilter {
        label_contains: Some("BLUE".into()),
        metadata: meta("CD"),
    };
    let first = store.list_classes(0, 2, &blue_cds).await.unwrap();
    let after = first[1].id;
    assert_eq!(labels(first), ["Kind of Blue", "Blue Note Sampler"]);
    let rest = store.list_classes(after, 2, &blue_cds).await.unwrap();
    assert_eq!(labels(rest), ["Blue Monk"]);
    // A key that no class has, or a value with SQL in it, matches nothing.
    let odd = ClassFilter {
        label_contains: Some("%".into()),
        metadata: Metadata::new(),
    };
    assert!(store.list_classes(0, 10, &odd).await.unwrap().is_empty());
    let missing = ClassFilter {
        label_contains: None,
        metadata: Metadata::from([("artist".to_string(), "x' OR '1'='1".to_string())]),
    };
    assert!(store
        .list_classes(0, 10, &missing)
        .await
        .unwrap()
        .is_empty());
}

async fn unknowns_inbox_is_bounded_by_count_and_age_and_keeps_the_photo<B: Backend>(backend: B) {
    use exemplar_core::unknowns::{InboxPolicy, NewUnknown, UnknownStore};
    let store = backend.open().await;
    let policy = InboxPolicy {
        max_count: 3,
        max_bytes: 1_000,
        max_age_ms: 60_000,
    };
    let photo = |i: u8| NewUnknown {
        photo: vec![i; 10 + i as usize],
        name: Some(format!("p{i}.jpg")),
        crop: (i == 4).then(|| "1,2,3,4".to_string()),
        nearest_class: Some((7, "Blue Train".into())),
        best_inliers: Some(u32::from(i)),
    };
    let mut ids = Vec::new();
    for i in 0..5u8 {
        ids.push(
            store
                .keep_unknown(&photo(i), policy, 1_000 + i64::from(i))
                .await
                .unwrap()
                .expect("kept"),
        );
    }
    // The count bound: the three newest, newest first.
    let listed = store.unknowns(0, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[4], ids[3], ids[2]]
    );
    let (record, bytes) = store.unknown(ids[4]).await.unwrap().unwrap();
    assert_eq!(bytes, vec![4u8; 14]);
    assert_eq!(record.bytes, 14);
    assert_eq!(record.crop.as_deref(), Some("1,2,3,4"));
    assert_eq!(record.nearest_class, Some((7, "Blue Train".into())));
    assert_eq!(record.best_inliers, Some(4));
    // Paging: older than the newest.
    let older = store.unknowns(ids[4], 10).await.unwrap();
    assert_eq!(older.len(), 2);
    // The age bound: a minute later only what is younger than a minute stays.
    assert_eq!(store.expire_unknowns(policy, 61_004).await.unwrap(), 2);
    assert_eq!(store.unknowns(0, 10).await.unwrap().len(), 1);
    assert!(store.remove_unknown(ids[4]).await.unwrap());
    assert!(!store.remove_unknown(ids[4]).await.unwrap());
    assert!(store.unknown(ids[4]).await.unwrap().is_none());
    // The byte bound: photos of 10 bytes each with room for 25 keep the newest two.
    let small = InboxPolicy {
        max_bytes: 25,
        ..policy
    };
    for i in 0..3 {
        let unknown = NewUnknown {
            photo: vec![0; 10],
            ..photo(i)
        };
        store.keep_unknown(&unknown, small, 62_000).await.unwrap();
    }
    let sizes: Vec<usize> = store
        .unknowns(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|u| u.bytes)
        .collect();
    assert_eq!(sizes, [10, 10]);
    // A photo larger than the whole budget is not kept at all.
    let large = NewUnknown {
        photo: vec![0; 26],
        ..photo(5)
    };
    assert_eq!(
        store.keep_unknown(&large, small, 62_000).await.unwrap(),
        None
    );
    // Turned off: everything goes.
    store.keep_unknown(&photo(9), policy, 70_000).await.unwrap();
    store
        .expire_unknowns(InboxPolicy::OFF, 70_000)
        .await
        .unwrap();
    assert!(store.unknowns(0, 10).await.unwrap().is_empty());
}

/// Two handles on one catalogue (two servers on one database): the same photo sent to
/// one class through both is stored once, a class deleted while the other adds to it
/// leaves no exemplar behind, and the change log lists every write once, in order.
async fn two_servers_writing_at_once_lose_and_duplicate_nothing<B: Backend>(backend: B) {
    let a = std::sync::Arc::new(backend.open().await);
    let b = std::sync::Arc::new(backend.open().await);
    let (shared, _) = a
        .create_class("Shared", &Metadata::new(), &[])
        .await
        .unwrap();
    let (doomed, _) = a
        .create_class("Doomed", &Metadata::new(), &[])
        .await
        .unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for (w, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        writers.spawn(async move {
            let mut added = Vec::new();
            for i in 0..20 {
                // The same 20 photos from both, and 20 of each writer's own.
                for sha in [format!("same-{i}"), format!("own-{w}-{i}")] {
                    for s in store
                        .add_exemplars(shared.id, &[exemplar(&sha, 0.5)])
                        .await?
                    {
                        if let Stored::Added(id) = s {
                            added.push(id);
                        }
                    }
                }
                match store
                    .add_exemplars(doomed.id, &[exemplar(&format!("d-{w}-{i}"), 0.5)])
                    .await
                {
                    Ok(_) | Err(StoreError::ClassNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, StoreError>(added)
        });
    }
    let deleter = {
        let b = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            b.delete_class(doomed.id).await
        })
    };
    let mut added = Vec::new();
    while let Some(done) = writers.join_next().await {
        added.extend(done.unwrap().unwrap());
    }
    deleter.await.unwrap().unwrap();
    added.sort_unstable();
    let (_, exemplars) = b.class(shared.id).await.unwrap().unwrap();
    assert_eq!(exemplars.len(), 60, "20 shared photos once, 20 own of each");
    assert_eq!(
        exemplars.iter().map(|e| e.id).collect::<Vec<_>>(),
        added,
        "every acknowledged add is there, once"
    );
    assert!(b.class(doomed.id).await.unwrap().is_none());
    let live: std::collections::HashSet<i64> = a
        .exemplar_hashes()
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(live.len(), 60, "nothing of the deleted class is left");
    // Replaying the log gives the live set: every add once, removals after their add.
    let mut replayed = std::collections::HashSet::new();
    let mut last = 0;
    for change in a.changes_since(0).await.unwrap() {
        match change {
            Change::ExemplarAdded { seq, exemplar } => {
                assert!(seq > last && replayed.insert(exemplar));
                last = seq;
            }
            Change::ExemplarRemoved { seq, exemplar } => {
                assert!(seq > last && replayed.remove(&exemplar));
                last = seq;
            }
        }
    }
    assert_eq!(replayed, live);
}

/// A server that embedded a photo in a projection another server has since replaced is
/// told to send it again, and a refit re-projects what an older projection wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_one_projection_across_servers() {
    use exemplar_core::Projection;
    let server = TempPostgres::start();
    let url = server.database();
    let store = PgStore::connect(&url).await.unwrap();
    let old = Projection::random_orthogonal(4, 2, 1);
    store.set_projection(&old).await.unwrap();
    let in_old = |sha: &str| NewExemplar {
        projection: old.version().to_string(),
        ..exemplar(sha, 0.5)
    };
    let (class, stored) = store
        .create_class("A", &Metadata::new(), &[in_old("a"), in_old("b")])
        .await
        .unwrap();
    let Stored::Added(a) = stored[0] else {
        panic!()
    };
    let Stored::Added(b) = stored[1] else {
        panic!()
    };
    let new = Projection::random_orthogonal(4, 2, 2);
    // A refit that had only seen "a" (the other server added "b" meanwhile).
    let descriptor_a = vec![1.0, 0.0];
    store
        .reproject(&new, &[(a, descriptor_a.clone())])
        .await
        .unwrap();
    let descriptors = store.descriptors(&[a, b]).await.unwrap();
    assert_eq!(descriptors[0], (a, descriptor_a));
    let expected_b = new
        .apply(&exemplar_core::PooledFeature(vec![0.5; 4]))
        .unwrap();
    assert_eq!(descriptors[1], (b, expected_b));
    let (_, records) = store.class(class.id).await.unwrap().unwrap();
    assert!(records.iter().all(|e| e.projection == new.version()));
    // A write still in the old projection is refused, and nothing of it is stored.
    assert!(matches!(
        store.add_exemplars(class.id, &[in_old("c")]).await,
        Err(StoreError::Stale(_))
    ));
    assert_eq!(store.exemplar_count().await.unwrap(), 2);
}
