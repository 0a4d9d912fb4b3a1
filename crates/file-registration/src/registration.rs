//! From a `data_file` / `g3_file` datagram to the row it registers.

use chrono::{DateTime, Utc};
use files_db::FileRow;
use smurf_protocol::{Envelope, FilePayload};

/// Who records the files: the monitor agent's address parts and the
/// recording program, written into every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorder {
    /// The site: first part of the agent address (`address_root`), the `site` column.
    pub site: String,
    /// The agent's instance id, the `instance_id` column.
    pub instance_id: String,
    /// Program name and version, the `socs_version` column.
    pub program: String,
}

impl Recorder {
    /// This build of pysmurf-monitor-rs as the recording program.
    pub fn this_program(site: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            instance_id: instance_id.into(),
            program: concat!("pysmurf-monitor-rs ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// The path a file payload registers: pysmurf's `np.save` appends `.npy` to
/// a path that lacks it, so a `npy` file announced without the suffix is
/// stored with it (as the socs agent does).
///
/// ```
/// use file_registration::registered_path;
/// use smurf_protocol::FilePayload;
///
/// let mut file = FilePayload::new("/data/1700000000_tune", "tuning");
/// file.format = Some("npy".into());
/// assert_eq!(registered_path(&file), "/data/1700000000_tune.npy");
/// file.path = "/data/x.npy".into();
/// assert_eq!(registered_path(&file), "/data/x.npy");
/// ```
pub fn registered_path(file: &FilePayload) -> String {
    if file.format.as_deref() == Some("npy") && !file.path.ends_with(".npy") {
        format!("{}.npy", file.path)
    } else {
        file.path.clone()
    }
}

/// The row a file datagram registers, given its file's `md5sum`.
///
/// Columns: `path` (see [`registered_path`]), `action`, `timestamp` (the
/// payload's epoch seconds as UTC), `action_timestamp` (`action_ts`),
/// `format`, `plot`, `site` and `instance_id` (the recorder), `pub_id`
/// (envelope `id`), `script_id` (envelope `script`), `copied` 0,
/// `failed_copy_attempts` 0, `md5sum`, `pysmurf_version` (payload) and
/// `socs_version` (the recording program).
pub fn file_row(
    envelope: &Envelope,
    file: &FilePayload,
    recorder: &Recorder,
    md5sum: [u8; 16],
) -> FileRow {
    FileRow {
        path: registered_path(file),
        action: file.action.clone(),
        timestamp: file.timestamp.and_then(epoch_to_utc),
        action_timestamp: file.action_ts,
        format: file.format.clone(),
        plot: file.plot,
        site: Some(recorder.site.clone()),
        pub_id: Some(envelope.pub_id.clone()),
        script_id: envelope.script_id.clone(),
        instance_id: Some(recorder.instance_id.clone()),
        copied: Some(false),
        failed_copy_attempts: Some(0),
        md5sum,
        pysmurf_version: file.pysmurf_version.clone(),
        socs_version: Some(recorder.program.clone()),
        archive_name: file.archive_name.clone(),
        registered_at: None,
    }
}

/// Epoch seconds to UTC; `None` when not representable.
fn epoch_to_utc(seconds: f64) -> Option<DateTime<Utc>> {
    if !seconds.is_finite() {
        return None;
    }
    let whole = seconds.floor();
    let nanos = ((seconds - whole) * 1e9).round().min(999_999_999.0) as u32;
    DateTime::from_timestamp(whole as i64, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smurf_protocol::{Datagram, Message};

    fn parse(json: &str) -> (Envelope, FilePayload) {
        let datagram = Datagram::parse(json.as_bytes()).unwrap();
        let envelope = datagram.envelope().clone();
        match datagram.into_message() {
            Message::DataFile(file) | Message::G3File(file) => (envelope, file),
            other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn every_column_comes_from_where_the_issue_says() {
        let (envelope, file) = parse(
            r#"{"host":"srv","id":"crate1slot2","script":"tune.py","time":1700000001.0,"seq_no":3,
                "type":"data_file","payload":{"path":"/data/out/1700000000_tune","type":"tuning",
                "format":"npy","timestamp":1700000000.25,"action":"tune_band","action_ts":1699999999,
                "plot":1,"pysmurf_version":"v8.1.0"}}"#,
        );
        let recorder = Recorder::this_program("observatory", "pysmurf-monitor");
        let row = file_row(&envelope, &file, &recorder, [9; 16]);
        assert_eq!(row.path, "/data/out/1700000000_tune.npy");
        assert_eq!(row.action.as_deref(), Some("tune_band"));
        assert_eq!(
            row.timestamp,
            DateTime::from_timestamp(1_700_000_000, 250_000_000)
        );
        assert_eq!(row.action_timestamp, Some(1_699_999_999));
        assert_eq!(row.format.as_deref(), Some("npy"));
        assert_eq!(row.plot, Some(true));
        assert_eq!(row.site.as_deref(), Some("observatory"));
        assert_eq!(row.pub_id.as_deref(), Some("crate1slot2"));
        assert_eq!(row.script_id.as_deref(), Some("tune.py"));
        assert_eq!(row.instance_id.as_deref(), Some("pysmurf-monitor"));
        assert_eq!(row.copied, Some(false));
        assert_eq!(row.failed_copy_attempts, Some(0));
        assert_eq!(row.md5sum, [9; 16]);
        assert_eq!(row.pysmurf_version.as_deref(), Some("v8.1.0"));
        assert!(row
            .socs_version
            .as_deref()
            .unwrap()
            .starts_with("pysmurf-monitor-rs "));
    }

    #[test]
    fn nulls_and_old_publishers_give_nulls() {
        let (envelope, file) = parse(
            r#"{"host":"srv","id":"p","script":null,"time":1.0,"seq_no":0,"type":"g3_file",
                "payload":{"path":"/data/a.g3","type":"g3","format":"","timestamp":5,
                "action":null,"action_ts":null,"plot":false}}"#,
        );
        let row = file_row(&envelope, &file, &Recorder::this_program("s", "i"), [0; 16]);
        assert_eq!(row.path, "/data/a.g3");
        assert_eq!(row.action, None);
        assert_eq!(row.action_timestamp, None);
        assert_eq!(row.script_id, None);
        assert_eq!(row.pysmurf_version, None);
        assert_eq!(row.format.as_deref(), Some(""));
        assert_eq!(row.timestamp, DateTime::from_timestamp(5, 0));
    }

    #[test]
    fn unrepresentable_times_are_null_not_made_up() {
        assert_eq!(epoch_to_utc(f64::NAN), None);
        assert_eq!(epoch_to_utc(f64::INFINITY), None);
        assert_eq!(epoch_to_utc(1e300), None);
        assert_eq!(
            epoch_to_utc(-1.5),
            DateTime::from_timestamp(-2, 500_000_000)
        );
    }
}
