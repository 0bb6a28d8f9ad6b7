//! The catalogue service over the real SQLite store and HNSW index, where persistence
//! matters: restarts from the index dump and the change log, deletions in the graph. Its
//! other logic is tested in exemplar-core over in-memory stand-ins.

use exemplar_core::catalogue::Metadata;
use exemplar_core::service::Catalogue;
use exemplar_core::testing::{add_photo_classes, nth_photo, text_catalogue, text_upload, TEXT_DIM};
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;

const DIM: usize = TEXT_DIM;

async fn catalogue(path: &std::path::Path, index: AnnIndex) -> Catalogue<SqliteStore, AnnIndex> {
    text_catalogue(SqliteStore::open(path).await.unwrap(), index)
}

fn fresh_index() -> AnnIndex {
    AnnIndex::new(DIM, IndexParams::default(), 100)
}

#[tokio::test]
async fn a_restarted_index_catches_up_from_its_dump_and_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let dump = dir.path().join("index");
    let (a, b, c, watermark) = {
        let cat = catalogue(&db, fresh_index()).await;
        let (a, _) = cat
            .add_class("A", &Metadata::new(), &[text_upload("item-3")])
            .await
            .unwrap();
        let (b, _) = cat
            .add_class("B", &Metadata::new(), &[text_upload("item-4")])
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
            .add_class("C", &Metadata::new(), &[text_upload("item-5")])
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
            .search(&text_upload(probe), 1, &Metadata::new())
            .await
            .unwrap();
        assert_eq!(answer.neighbours[0].class_id, class, "{probe}");
    }
    let answer = cat
        .search(&text_upload("item-4"), 3, &Metadata::new())
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

#[tokio::test]
async fn deleted_exemplars_leave_the_graph_at_once_and_need_no_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(&dir.path().join("c.sqlite"), fresh_index()).await;
    let none = Metadata::new();
    let classes = add_photo_classes(&cat, 10).await;
    for class in &classes[..3] {
        cat.delete_class(*class).await.unwrap();
    }
    assert_eq!(cat.indexed(), 7);
    assert!(
        cat.compact_if_due().await.unwrap().is_none(),
        "hnswlib reuses deleted slots: nothing to compact"
    );
    for (i, class) in classes.iter().enumerate() {
        let answer = cat.search(&nth_photo(i), 10, &none).await.unwrap();
        let found: Vec<_> = answer.neighbours.iter().map(|n| n.class_id).collect();
        if i < 3 {
            assert!(!found.contains(class), "deleted class {i} came back");
        } else {
            assert_eq!(found[0], *class);
        }
    }
}
