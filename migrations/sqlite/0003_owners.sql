-- tower-byok schema, SQLite: owners (migration 3).
--
-- A key belongs to a user, a team or the platform: `owner_kind` says which, and
-- `user_id` holds the owner's id within its kind. Every row written before this
-- migration belongs to a user, so the column defaults to 'user' and those rows keep
-- opening as they are (their associated data has no owner kind; docs/FORMAT.md §6).
-- The kind is part of the primary key, so user `acme` and team `acme` are two owners.
--
-- SQLite cannot change a primary key in place: the table is rebuilt, which drops its
-- indexes and the change feed's triggers (migration 2); both are made again below, the
-- triggers now noting the owner kind beside the id in `byok_changes`.
CREATE TABLE byok_keys_v3 (
    owner_kind  TEXT    NOT NULL DEFAULT 'user' CHECK (owner_kind IN ('user', 'team', 'platform')),
    user_id     TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    sealed      BLOB    NOT NULL,
    hint        TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    PRIMARY KEY (user_id, owner_kind, provider)
);
INSERT INTO byok_keys_v3 (owner_kind, user_id, provider, key_id, sealed, hint, fingerprint,
                          created_at, updated_at, expires_at)
SELECT 'user', user_id, provider, key_id, sealed, hint, fingerprint,
       created_at, updated_at, expires_at
FROM byok_keys;
DROP TABLE byok_keys;
ALTER TABLE byok_keys_v3 RENAME TO byok_keys;
CREATE INDEX byok_keys_key_id ON byok_keys (key_id);
CREATE INDEX byok_keys_expires_at ON byok_keys (expires_at) WHERE expires_at IS NOT NULL;

-- The feed names the owner: kind and id. Older rows were all users'.
ALTER TABLE byok_changes ADD COLUMN owner_kind TEXT NOT NULL DEFAULT 'user';

CREATE TRIGGER byok_keys_inserted AFTER INSERT ON byok_keys
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES (NEW.owner_kind, NEW.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER byok_keys_updated AFTER UPDATE ON byok_keys
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES (OLD.owner_kind, OLD.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    INSERT INTO byok_changes (owner_kind, user_id, at)
    SELECT NEW.owner_kind, NEW.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NEW.user_id IS NOT OLD.user_id OR NEW.owner_kind IS NOT OLD.owner_kind;
END;

CREATE TRIGGER byok_keys_deleted AFTER DELETE ON byok_keys
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES (OLD.owner_kind, OLD.user_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- Each team's policy: whether its members' own keys win over the team's (the default,
-- when a team has no row) or only the team's keys serve. A change is noted in the feed
-- as a change of the team, so it invalidates like a write of the team's keys.
CREATE TABLE byok_team_policies (
    team_id       TEXT    PRIMARY KEY,
    members_keys  BOOLEAN NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TRIGGER byok_team_policies_inserted AFTER INSERT ON byok_team_policies
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES ('team', NEW.team_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER byok_team_policies_updated AFTER UPDATE ON byok_team_policies
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES ('team', OLD.team_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    INSERT INTO byok_changes (owner_kind, user_id, at)
    SELECT 'team', NEW.team_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NEW.team_id IS NOT OLD.team_id;
END;

CREATE TRIGGER byok_team_policies_deleted AFTER DELETE ON byok_team_policies
BEGIN
    INSERT INTO byok_changes (owner_kind, user_id, at)
    VALUES ('team', OLD.team_id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
