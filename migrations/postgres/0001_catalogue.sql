-- The catalogue in PostgreSQL, shared by every server that serves it: the same tables as
-- the SQLite catalogue (see migrations/sqlite for what each column holds). Vectors are
-- little-endian f32 in BYTEA; times are unix milliseconds.

CREATE TABLE classes (
    id          BIGSERIAL PRIMARY KEY,
    label       TEXT   NOT NULL CHECK (length(label) > 0),
    metadata    TEXT   NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE exemplars (
    id              BIGSERIAL PRIMARY KEY,
    class_id        BIGINT  NOT NULL REFERENCES classes (id),
    sha256          TEXT    NOT NULL,
    original_name   TEXT,
    raw_feature     BYTEA   NOT NULL,
    descriptor      BYTEA   NOT NULL,
    model           TEXT    NOT NULL,
    projection      TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    local_features  BYTEA,
    photo_kept      BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (class_id, sha256)
);
CREATE INDEX exemplars_by_sha256 ON exemplars (sha256);
CREATE INDEX exemplars_with_photo ON exemplars (sha256) WHERE photo_kept;

-- Written only under the change-log lock (an advisory transaction lock every writer of
-- this table takes first), so sequence numbers become visible in order: a server that
-- has applied every change up to N never later sees a change below N appear.
CREATE TABLE changes (
    seq          BIGSERIAL PRIMARY KEY,
    kind         TEXT   NOT NULL CHECK (kind IN ('exemplar_added', 'exemplar_removed')),
    exemplar_id  BIGINT NOT NULL,
    at           BIGINT NOT NULL
);

CREATE TABLE projections (
    version     TEXT    PRIMARY KEY,
    data        BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    current     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX one_current_projection ON projections (current) WHERE current;

CREATE TABLE reindex_jobs (
    id           BIGSERIAL PRIMARY KEY,
    spec         TEXT   NOT NULL,
    model        TEXT   NOT NULL,
    state        TEXT   NOT NULL CHECK (state IN ('building', 'switched', 'cancelled')),
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE UNIQUE INDEX one_reindex_building ON reindex_jobs (state) WHERE state = 'building';

CREATE TABLE reindexed (
    job             BIGINT NOT NULL REFERENCES reindex_jobs (id),
    exemplar_id     BIGINT NOT NULL,
    raw_feature     BYTEA  NOT NULL,
    local_features  BYTEA,
    descriptor      BYTEA,
    PRIMARY KEY (job, exemplar_id)
);

CREATE TABLE unknowns (
    id                BIGSERIAL PRIMARY KEY,
    created_at        BIGINT NOT NULL,
    photo             BYTEA  NOT NULL,
    name              TEXT,
    crop              TEXT,
    nearest_class_id  BIGINT,
    nearest_label     TEXT,
    best_inliers      BIGINT
);
CREATE INDEX unknowns_by_age ON unknowns (created_at);
