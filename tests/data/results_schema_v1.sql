-- The results database schema as released at version 1 (farmbench 0.1.0). Frozen: tests check that
-- migration step 1 still produces exactly this, and that a database made from it migrates to the current
-- version. Never edit; a schema change is a new migration step.

CREATE TABLE artifacts (
            key           TEXT PRIMARY KEY,
            name          TEXT NOT NULL,
            format        TEXT NOT NULL,
            sha256        TEXT,
            manifest_json TEXT NOT NULL
        );

CREATE TABLE devices (
            id           INTEGER PRIMARY KEY,
            identity     TEXT NOT NULL UNIQUE,
            name         TEXT NOT NULL,
            kind         TEXT NOT NULL CHECK (kind IN ('local', 'ssh', 'adb')),
            context_json TEXT NOT NULL,
            first_seen   TEXT NOT NULL,
            last_seen    TEXT NOT NULL
        );

CREATE TABLE measurements (
            id              INTEGER PRIMARY KEY,
            run_id          TEXT NOT NULL REFERENCES runs(id),
            device_id       INTEGER NOT NULL REFERENCES devices(id),
            artifact_key    TEXT NOT NULL REFERENCES artifacts(key),
            artifact_sha256 TEXT,
            plan_index      INTEGER,
            repeat          INTEGER NOT NULL DEFAULT 0,
            runtime         TEXT NOT NULL,
            runtime_version TEXT,
            config_json     TEXT NOT NULL,
            status          TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'skipped')),
            transient       INTEGER NOT NULL DEFAULT 0 CHECK (transient IN (0, 1)),
            error_class     TEXT,
            error_message   TEXT,
            samples         BLOB,
            samples_format  TEXT,
            aggregates_json TEXT NOT NULL,
            context_json    TEXT NOT NULL,
            flags_json      TEXT NOT NULL,
            started_at      TEXT NOT NULL,
            finished_at     TEXT NOT NULL
        );

CREATE TABLE runs (
            id                TEXT PRIMARY KEY,
            started_at        TEXT NOT NULL,
            finished_at       TEXT,
            status            TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
            git_commit        TEXT,
            sweep_name        TEXT NOT NULL,
            sweep_sha256      TEXT NOT NULL,
            sweep_json        TEXT NOT NULL,
            host              TEXT NOT NULL,
            farmbench_version TEXT NOT NULL,
            plan_json         TEXT NOT NULL,
            seed              INTEGER,
            command_json      TEXT NOT NULL
        );

PRAGMA user_version = 1;
