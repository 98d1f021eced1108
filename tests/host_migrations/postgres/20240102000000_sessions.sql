CREATE TABLE app_sessions (token TEXT PRIMARY KEY, user_id BIGINT NOT NULL REFERENCES app_users (id));
