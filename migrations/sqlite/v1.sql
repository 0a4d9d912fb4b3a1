-- pysmurf_files_v1 for SQLite: the closest equivalent of mysql/v1.sql.
-- Same column names and order; the declared types keep MariaDB's spelling so
-- that `.schema` reads like the production table, and SQLite's affinity
-- rules map them to INTEGER, TEXT and BLOB storage.
--
-- SQLite does not enforce VARCHAR lengths, INT ranges or BINARY sizes, so
-- CHECK constraints do: a value MariaDB (strict mode) would reject is
-- rejected here too, and the monitor handles both backends alike.
-- `timestamp` is stored as UTC text 'YYYY-MM-DD HH:MM:SS' (SQLite's own
-- datetime() format).
CREATE TABLE IF NOT EXISTS pysmurf_files_v1 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path VARCHAR(260) NOT NULL CHECK (length(path) <= 260),
    action VARCHAR(32) CHECK (length(action) <= 32),
    timestamp TIMESTAMP,
    action_timestamp INT CHECK (action_timestamp BETWEEN -2147483648 AND 2147483647),
    format VARCHAR(32) CHECK (length(format) <= 32),
    plot TINYINT(1) CHECK (plot BETWEEN -128 AND 127),
    site VARCHAR(32) CHECK (length(site) <= 32),
    pub_id VARCHAR(32) CHECK (length(pub_id) <= 32),
    script_id VARCHAR(32) CHECK (length(script_id) <= 32),
    instance_id VARCHAR(32) CHECK (length(instance_id) <= 32),
    copied TINYINT(1) CHECK (copied BETWEEN -128 AND 127),
    failed_copy_attempts INT CHECK (failed_copy_attempts BETWEEN -2147483648 AND 2147483647),
    md5sum BINARY(16) NOT NULL CHECK (typeof(md5sum) = 'blob' AND length(md5sum) = 16),
    pysmurf_version VARCHAR(64) CHECK (length(pysmurf_version) <= 64),
    socs_version VARCHAR(64) CHECK (length(socs_version) <= 64)
);
CREATE INDEX IF NOT EXISTS pysmurf_files_v1_path ON pysmurf_files_v1 (path);
