-- tower-byok schema, PostgreSQL: the change feed (migration 2).
--
-- Every change to byok_keys, by this crate in any process, by the CLI or by an
-- operator's SQL, is noted here by a trigger, so that every instance can drop the
-- cached keys of the users changed. Rows are pruned by age by the instances reading
-- them. `user_id` NULL stands for every user (a TRUNCATE). `at` is Unix milliseconds
-- by the database's clock, for pruning. Sequence values commit out of order: readers
-- use their snapshot to know when a lower one can no longer appear.
CREATE TABLE byok_changes (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id  TEXT,
    at       BIGINT NOT NULL
);
CREATE INDEX byok_changes_at ON byok_changes (at);

CREATE FUNCTION byok_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO byok_changes (user_id, at) VALUES (NULL, now_ms);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO byok_changes (user_id, at) VALUES (NEW.user_id, now_ms);
    ELSE
        -- UPDATE or DELETE (where NEW is NULL: it must not read as "every user").
        INSERT INTO byok_changes (user_id, at) VALUES (OLD.user_id, now_ms);
        IF TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id THEN
            INSERT INTO byok_changes (user_id, at) VALUES (NEW.user_id, now_ms);
        END IF;
    END IF;
    -- The doorbell: no payload, so nothing about the change leaves the table.
    -- Identical notifications of one transaction are delivered once, at commit.
    PERFORM pg_notify('byok_changes', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER byok_keys_changed AFTER INSERT OR UPDATE OR DELETE ON byok_keys
    FOR EACH ROW EXECUTE FUNCTION byok_note_change();
CREATE TRIGGER byok_keys_truncated AFTER TRUNCATE ON byok_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok_note_change();
