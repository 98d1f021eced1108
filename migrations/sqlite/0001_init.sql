-- tower-byok schema, SQLite. Applied by the crate's own runner (table byok_migrations).

-- One sealed key per (user, provider). `hint` and `fingerprint` are computed at write
-- time so listing never decrypts. Times are Unix milliseconds.
CREATE TABLE byok_keys (
    user_id     TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    sealed      BLOB    NOT NULL,
    hint        TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    PRIMARY KEY (user_id, provider)
);
CREATE INDEX byok_keys_key_id ON byok_keys (key_id);
CREATE INDEX byok_keys_expires_at ON byok_keys (expires_at) WHERE expires_at IS NOT NULL;

-- Who changed which key of which user, and when. The user is a keyed hash; no secret.
CREATE TABLE byok_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        BIGINT  NOT NULL,
    user_ref  TEXT    NOT NULL,
    provider  TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    actor     TEXT    NOT NULL
);
CREATE INDEX byok_audit_user_ref ON byok_audit (user_ref, id);
CREATE INDEX byok_audit_at ON byok_audit (at);

-- The vault secret sealed under each master key that has opened this database: proves
-- at start-up that the keyring can read it.
CREATE TABLE byok_check (
    key_id      TEXT   PRIMARY KEY,
    sealed      BLOB   NOT NULL,
    created_at  BIGINT NOT NULL
);
