CREATE TABLE app_sessions (token TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES app_users (id));
