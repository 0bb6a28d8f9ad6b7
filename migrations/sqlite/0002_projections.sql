-- The projection that maps raw pooled features to descriptors, kept with the catalogue so
-- a refit (new projection + every descriptor re-projected) commits in one transaction.
CREATE TABLE projections (
    version     TEXT    PRIMARY KEY,
    data        BLOB    NOT NULL, -- safetensors: mean and matrix
    created_at  INTEGER NOT NULL,
    current     INTEGER NOT NULL DEFAULT 0 CHECK (current IN (0, 1))
);
CREATE UNIQUE INDEX one_current_projection ON projections (current) WHERE current = 1;
