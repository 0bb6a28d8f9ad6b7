-- Whether the exemplar's photo (the bytes as sent, named by `sha256`) and its thumbnail
-- are kept in the data directory's photo store; 0: features only (rows that existed when
-- this column was added, or written with photos off).
ALTER TABLE exemplars ADD COLUMN photo_kept INTEGER NOT NULL DEFAULT 0 CHECK (photo_kept IN (0, 1));
CREATE INDEX exemplars_with_photo ON exemplars (sha256) WHERE photo_kept = 1;
