-- A host application's own schema, migrated with sqlx's migrator on the same database.
CREATE TABLE app_users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
