-- tower-byok schema, PostgreSQL: owners (migration 3).
--
-- A key belongs to a user, a team or the platform: `owner_kind` says which, and
-- `user_id` holds the owner's id within its kind. Every row written before this
-- migration belongs to a user, so the column defaults to 'user' and those rows keep
-- opening as they are (their associated data has no owner kind; docs/FORMAT.md §6).
-- The kind is part of the primary key, so user `acme` and team `acme` are two owners.
-- Adding a column with a constant default rewrites no row and fires no trigger.
ALTER TABLE byok_keys
    ADD COLUMN owner_kind TEXT NOT NULL DEFAULT 'user'
        CHECK (owner_kind IN ('user', 'team', 'platform'));
ALTER TABLE byok_keys
    DROP CONSTRAINT byok_keys_pkey,
    ADD PRIMARY KEY (user_id, owner_kind, provider);

-- The feed names the owner: kind and id. Older rows were all users'; a TRUNCATE's row
-- (user_id NULL) stands for every owner of every kind, whatever its kind says.
ALTER TABLE byok_changes ADD COLUMN owner_kind TEXT NOT NULL DEFAULT 'user';

CREATE OR REPLACE FUNCTION byok_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO byok_changes (user_id, at) VALUES (NULL, now_ms);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO byok_changes (owner_kind, user_id, at)
        VALUES (NEW.owner_kind, NEW.user_id, now_ms);
    ELSE
        -- UPDATE or DELETE (where NEW is NULL: it must not read as "every user").
        INSERT INTO byok_changes (owner_kind, user_id, at)
        VALUES (OLD.owner_kind, OLD.user_id, now_ms);
        IF TG_OP = 'UPDATE' AND (NEW.user_id IS DISTINCT FROM OLD.user_id
                                 OR NEW.owner_kind IS DISTINCT FROM OLD.owner_kind) THEN
            INSERT INTO byok_changes (owner_kind, user_id, at)
            VALUES (NEW.owner_kind, NEW.user_id, now_ms);
        END IF;
    END IF;
    -- The doorbell: no payload, so nothing about the change leaves the table.
    -- Identical notifications of one transaction are delivered once, at commit.
    PERFORM pg_notify('byok_changes', '');
    RETURN NULL;
END
$$;

-- Each team's policy: whether its members' own keys win over the team's (the default,
-- when a team has no row) or only the team's keys serve. A change is noted in the feed
-- as a change of the team, so it invalidates like a write of the team's keys.
CREATE TABLE byok_team_policies (
    team_id       TEXT    PRIMARY KEY,
    members_keys  BOOLEAN NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE FUNCTION byok_note_policy_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO byok_changes (user_id, at) VALUES (NULL, now_ms);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO byok_changes (owner_kind, user_id, at) VALUES ('team', NEW.team_id, now_ms);
    ELSE
        INSERT INTO byok_changes (owner_kind, user_id, at) VALUES ('team', OLD.team_id, now_ms);
        IF TG_OP = 'UPDATE' AND NEW.team_id IS DISTINCT FROM OLD.team_id THEN
            INSERT INTO byok_changes (owner_kind, user_id, at) VALUES ('team', NEW.team_id, now_ms);
        END IF;
    END IF;
    PERFORM pg_notify('byok_changes', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER byok_team_policies_changed AFTER INSERT OR UPDATE OR DELETE ON byok_team_policies
    FOR EACH ROW EXECUTE FUNCTION byok_note_policy_change();
CREATE TRIGGER byok_team_policies_truncated AFTER TRUNCATE ON byok_team_policies
    FOR EACH STATEMENT EXECUTE FUNCTION byok_note_policy_change();
