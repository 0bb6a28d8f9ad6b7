-- Local features of each exemplar for spatial verification (the second search stage):
-- an opaque, bounded blob (about 40 KB at 1,000 keypoints) written at ingest. NULL for
-- exemplars stored before this migration or by a global-only service; re-importing the
-- same photos fills it in.
ALTER TABLE exemplars ADD COLUMN local_features BLOB;
