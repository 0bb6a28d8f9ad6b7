-- Re-indexing from the kept photos: a job per new index version, and the features it has
-- made so far (beside the current ones, which serve until the switch). `spec` holds the
-- settings of the version (model, weights, geometry, local features) as JSON; the last
-- job switched to names the settings the catalogue is indexed with.
CREATE TABLE reindex_jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    spec         TEXT    NOT NULL,
    model        TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('building', 'switched', 'cancelled')),
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE UNIQUE INDEX one_reindex_building ON reindex_jobs (state) WHERE state = 'building';

CREATE TABLE reindexed (
    job             INTEGER NOT NULL REFERENCES reindex_jobs (id),
    exemplar_id     INTEGER NOT NULL,
    raw_feature     BLOB    NOT NULL,
    -- NULL: the job keeps the exemplar's current local features.
    local_features  BLOB,
    -- In the job's projection, once fitted.
    descriptor      BLOB,
    PRIMARY KEY (job, exemplar_id)
);
