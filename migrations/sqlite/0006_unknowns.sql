-- The unknowns inbox: photos of searches answered `unknown`, kept only when the server
-- runs with `--keep-unknown N` (bounded by count and by age), so a person can make a
-- class of one or add it to a class. The photo is stored in the row: the inbox is small.
CREATE TABLE unknowns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    photo BLOB NOT NULL,
    name TEXT,
    crop TEXT,
    nearest_class_id INTEGER,
    nearest_label TEXT,
    best_inliers INTEGER
);
CREATE INDEX unknowns_by_age ON unknowns (created_at);
