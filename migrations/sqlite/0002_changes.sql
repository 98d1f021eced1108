-- tower-byok schema, SQLite: the change feed (migration 2).
--
-- Every change to byok_keys, by this crate in any process, by the CLI or by an
-- operator's SQL, is noted here by a trigger, so that every instance can drop the
-- cached keys of the users changed. Rows are pruned by age by the instances reading
-- them. `at` is Unix milliseconds, for pruning. SQLite has one writer at a time, so
-- sequence values commit in order.
CREATE TABLE byok_changes (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT,
    at       BIGINT  NOT NULL
);
CREATE INDEX byok_changes_at ON byok_changes (at);

CREATE TRIGGER byok_keys_inserted AFTER INSERT ON byok_keys
BEGIN
    INSERT INTO byok_changes (user_id, at)
    VALUES (NEW.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER byok_keys_updated AFTER UPDATE ON byok_keys
BEGIN
    INSERT INTO byok_changes (user_id, at)
    VALUES (OLD.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    INSERT INTO byok_changes (user_id, at)
    SELECT NEW.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NEW.user_id IS NOT OLD.user_id;
END;

CREATE TRIGGER byok_keys_deleted AFTER DELETE ON byok_keys
BEGIN
    INSERT INTO byok_changes (user_id, at)
    VALUES (OLD.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
