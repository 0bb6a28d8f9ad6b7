-- The catalogue: classes (items a photo can be recognised as), their exemplar photos,
-- and a monotonic change log the ANN index replays to catch up with the database.

CREATE TABLE classes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    label       TEXT    NOT NULL CHECK (length(label) > 0),
    -- JSON object of string values, e.g. {"artist": "...", "format": "CD"}.
    metadata    TEXT    NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL, -- unix milliseconds
    updated_at  INTEGER NOT NULL
);

CREATE TABLE exemplars (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    class_id       INTEGER NOT NULL REFERENCES classes (id),
    sha256         TEXT    NOT NULL, -- of the uploaded bytes
    original_name  TEXT,
    -- little-endian f32: the pooled CNN feature (refits re-project it) and the descriptor.
    raw_feature    BLOB    NOT NULL,
    descriptor     BLOB    NOT NULL,
    model          TEXT    NOT NULL,
    projection     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (class_id, sha256)
);
CREATE INDEX exemplars_by_sha256 ON exemplars (sha256);

CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL CHECK (kind IN ('exemplar_added', 'exemplar_removed')),
    exemplar_id  INTEGER NOT NULL,
    at           INTEGER NOT NULL
);
