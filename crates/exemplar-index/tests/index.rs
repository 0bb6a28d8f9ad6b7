use exemplar_index::{AnnIndex, IndexError, IndexParams};

/// Reproducible random unit vectors.
fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn items(vectors: &[Vec<f32>]) -> Vec<(u64, Vec<f32>)> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 * 3 + 7, v.clone()))
        .collect()
}

fn exact_top(items: &[(u64, Vec<f32>)], q: &[f32], k: usize) -> Vec<u64> {
    let mut scored: Vec<(f32, u64)> = items
        .iter()
        .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

#[test]
fn every_inserted_point_is_found_by_a_self_query_and_recall_is_high() {
    let data = items(&unit_vectors(3000, 64, 1));
    let index = AnnIndex::build(64, IndexParams::default(), &data).unwrap();
    assert_eq!(index.len(), 3000);
    for (id, v) in &data {
        let hits = index.search(v, 1).unwrap();
        assert_eq!(hits[0].id, *id, "point {id} unreachable");
        assert!((hits[0].score - 1.0).abs() < 1e-4);
    }
    let queries = unit_vectors(200, 64, 2);
    let mut found = 0;
    for q in &queries {
        let truth = exact_top(&data, q, 10);
        let got: Vec<u64> = index.search(q, 10).unwrap().iter().map(|h| h.id).collect();
        found += truth.iter().filter(|t| got.contains(t)).count();
    }
    let recall = found as f64 / (10 * queries.len()) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn removed_points_never_come_back_and_their_slots_are_reused() {
    let data = items(&unit_vectors(500, 32, 3));
    let mut index = AnnIndex::build(32, IndexParams::default(), &data).unwrap();
    let removed: Vec<u64> = data.iter().step_by(4).map(|(id, _)| *id).collect();
    for id in &removed {
        assert!(index.remove(*id));
        assert!(!index.remove(*id), "second removal is a no-op");
    }
    assert!(!index.remove(999_999), "unknown ids are not live");
    assert_eq!(index.len(), 500 - removed.len());
    for (id, v) in data.iter().step_by(4) {
        let hits = index.search(v, 20).unwrap();
        assert!(hits.iter().all(|h| h.id != *id));
        assert!(!index.contains(*id));
    }
    // New points take the freed slots: the graph does not grow, and every live point
    // (old and new) is still found by its own vector.
    let capacity = index.graph_capacity();
    let fresh: Vec<(u64, Vec<f32>)> = unit_vectors(removed.len(), 32, 30)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (10_000 + i as u64, v))
        .collect();
    index.insert_batch(&fresh).unwrap();
    assert_eq!(index.len(), 500);
    assert_eq!(index.graph_capacity(), capacity);
    for (id, v) in data
        .iter()
        .filter(|(id, _)| !removed.contains(id))
        .chain(&fresh)
    {
        assert_eq!(
            index.search(v, 1).unwrap()[0].id,
            *id,
            "point {id} unreachable"
        );
    }
    // A deleted id may come back, with its new vector.
    let back = &fresh[0].1;
    index.remove(fresh[0].0);
    index.insert(removed[0], back).unwrap();
    assert!(index.contains(removed[0]));
    assert_eq!(index.search(back, 1).unwrap()[0].id, removed[0]);
}

#[test]
fn the_index_grows_past_its_initial_capacity_in_one_batch_or_many() {
    let data = items(&unit_vectors(3000, 16, 11));
    let mut index = AnnIndex::new(16, IndexParams::default(), 10);
    index.insert_batch(&data[..2000]).unwrap();
    for (id, v) in &data[2000..] {
        index.insert(*id, v).unwrap();
    }
    assert_eq!(index.len(), 3000);
    for (id, v) in data.iter().step_by(7) {
        assert_eq!(index.search(v, 1).unwrap()[0].id, *id);
    }
}

#[test]
fn bad_vectors_are_refused_and_a_bad_batch_inserts_nothing() {
    let mut index = AnnIndex::new(8, IndexParams::default(), 10);
    let good = unit_vectors(2, 8, 4);
    assert!(matches!(
        index.insert(1, &[1.0; 7]),
        Err(IndexError::Dimension {
            expected: 8,
            got: 7
        })
    ));
    assert!(matches!(
        index.insert(1, &[1.0; 8]),
        Err(IndexError::NotNormalised { .. })
    ));
    index.insert(1, &good[0]).unwrap();
    assert!(matches!(
        index.insert(1, &good[1]),
        Err(IndexError::DuplicateId(1))
    ));
    let batch = vec![(2, good[1].clone()), (3, vec![0.0; 8])];
    assert!(index.insert_batch(&batch).is_err());
    assert_eq!(index.len(), 1, "nothing of the failed batch went in");
    assert!(index.search(&good[1], 0).unwrap().is_empty());
}

#[test]
fn a_dump_reloads_with_its_deletions_and_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let data = items(&unit_vectors(400, 16, 5));
    let mut index = AnnIndex::build(16, IndexParams::default(), &data).unwrap();
    index.remove(data[0].0);
    index.save(&path, 42, "space-a").unwrap();
    // Saving again replaces the dump.
    index.save(&path, 43, "space-a").unwrap();
    let (loaded, meta) = AnnIndex::load(&path, 16).unwrap();
    assert_eq!(meta.watermark, 43);
    assert_eq!(meta.space, "space-a");
    assert_eq!(loaded.len(), 399);
    assert!(!loaded.contains(data[0].0));
    for (id, v) in data.iter().skip(1).take(50) {
        assert_eq!(loaded.search(v, 1).unwrap()[0].id, *id);
    }
}

#[test]
fn an_empty_index_dumps_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    AnnIndex::new(8, IndexParams::default(), 10)
        .save(&path, 5, "space-a")
        .unwrap();
    let (mut index, meta) = AnnIndex::load(&path, 8).unwrap();
    assert_eq!((index.len(), meta.watermark), (0, 5));
    let v = unit_vectors(1, 8, 9).remove(0);
    index.insert(1, &v).unwrap();
    assert_eq!(index.search(&v, 1).unwrap()[0].id, 1);
}

#[test]
fn missing_corrupt_or_mismatched_dumps_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    assert!(matches!(
        AnnIndex::load(&path, 16),
        Err(IndexError::BadDump { .. })
    ));
    let data = items(&unit_vectors(100, 16, 6));
    AnnIndex::build(16, IndexParams::default(), &data)
        .unwrap()
        .save(&path, 1, "space-a")
        .unwrap();
    assert!(matches!(
        AnnIndex::load(&path, 32),
        Err(IndexError::BadDump { .. })
    ));
    for entry in std::fs::read_dir(&path).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "hnswlib") {
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
    let err = AnnIndex::load(&path, 16)
        .err()
        .expect("corrupt dump must not load");
    assert!(matches!(err, IndexError::BadDump { .. }), "{err}");
}

#[test]
fn a_dump_altered_in_place_is_refused_before_hnswlib_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let data = items(&unit_vectors(100, 16, 6));
    AnnIndex::build(16, IndexParams::default(), &data)
        .unwrap()
        .save(&path, 1, "space-a")
        .unwrap();
    let graph = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "hnswlib"))
        .expect("a graph file");
    let mut bytes = std::fs::read(&graph).unwrap();
    // The header's element count: a lie hnswlib would believe.
    bytes[16] ^= 0x40;
    std::fs::write(&graph, &bytes).unwrap();
    let err = AnnIndex::load(&path, 16)
        .err()
        .expect("altered dump must not load");
    assert!(err.to_string().contains("checksum"), "{err}");
}
