-- pysmurf_files_v1 for MariaDB / MySQL.
-- Column names, order and types are those of socs' pysmurf_files_manager:
-- the archiver and other tools read this table, so they must not change.
--
-- `timestamp` is spelled `TIMESTAMP NULL DEFAULT NULL` rather than a bare
-- `TIMESTAMP`: on servers where explicit_defaults_for_timestamp is OFF (MySQL
-- 5.x, MariaDB before 10.10) a bare first TIMESTAMP column silently becomes
-- `NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP`, and every
-- archiver UPDATE of `copied` would overwrite the file's time. The type is
-- the same; only the server's implicit default is ruled out.
--
-- The index on `path` is not a column: it keeps look-ups by path (the
-- monitor's replay de-duplication, backfill, the archiver) from scanning a
-- table that grows by millions of rows.
CREATE TABLE IF NOT EXISTS pysmurf_files_v1 (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    path VARCHAR(260) NOT NULL,
    action VARCHAR(32),
    timestamp TIMESTAMP NULL DEFAULT NULL,
    action_timestamp INT,
    format VARCHAR(32),
    plot TINYINT(1),
    site VARCHAR(32),
    pub_id VARCHAR(32),
    script_id VARCHAR(32),
    instance_id VARCHAR(32),
    copied TINYINT(1),
    failed_copy_attempts INT,
    md5sum BINARY(16) NOT NULL,
    pysmurf_version VARCHAR(64),
    socs_version VARCHAR(64),
    KEY pysmurf_files_v1_path (path)
);
