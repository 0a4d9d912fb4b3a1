//! pysmurf's directory layout: what a file's place in it says about the
//! action that wrote it, for files that were never announced (backfill).

use std::path::{Component, Path};

/// The columns a path's place in pysmurf's layout gives:
/// `<data>/<ctime5>/[<pub_id>/]<action_ts>_<action>/{outputs,plots}/…/FILE`.
///
/// ```
/// use file_registration::LayoutColumns;
/// use std::path::Path;
///
/// let path = Path::new("/data/smurf_data/17000/crate1slot2/1700000000_take_iv/plots/iv_b1.png");
/// let columns = LayoutColumns::of(path);
/// assert_eq!(columns.action.as_deref(), Some("take_iv"));
/// assert_eq!(columns.action_timestamp, Some(1_700_000_000));
/// assert_eq!(columns.plot, Some(true));
/// assert_eq!(columns.pub_id.as_deref(), Some("crate1slot2"));
/// assert_eq!(columns.format.as_deref(), Some("png"));
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayoutColumns {
    /// The `action` column: `<action>` of the action directory.
    pub action: Option<String>,
    /// The `action_timestamp` column: `<action_ts>` of the action directory.
    pub action_timestamp: Option<i64>,
    /// The `plot` column: whether the file is under `plots` (else `outputs`).
    pub plot: Option<bool>,
    /// The `pub_id` column: the directory between `<ctime5>` and the action
    /// directory, when there is one.
    pub pub_id: Option<String>,
    /// The `format` column: the file's extension.
    pub format: Option<String>,
}

impl LayoutColumns {
    /// Reads the columns from `path`. The innermost `<digits>_<action>`
    /// directory directly above `outputs` or `plots` is the action directory;
    /// `pub_id` is the directory between it and a five-digit `ctime5` directory.
    /// Outside the layout, action, action_timestamp, plot and pub_id are `None`.
    /// `format` is the file's extension wherever the file is (`None` without one).
    pub fn of(path: &Path) -> Self {
        let format = path
            .extension()
            .and_then(|ext| ext.to_str())
            .filter(|ext| !ext.is_empty())
            .map(str::to_owned);
        let parts: Vec<&str> = path
            .parent()
            .into_iter()
            .flat_map(Path::components)
            .filter_map(|c| match c {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect();
        let mut columns = Self {
            format,
            ..Self::default()
        };
        let layout = (0..parts.len().saturating_sub(1)).rev().find_map(|i| {
            let kind = parts[i + 1];
            if kind != "outputs" && kind != "plots" {
                return None;
            }
            action_dir(parts[i]).map(|(ts, action)| (i, ts, action, kind == "plots"))
        });
        let Some((i, ts, action, plot)) = layout else {
            return columns;
        };
        let is_ctime5 = |part: &str| part.len() == 5 && part.bytes().all(|b| b.is_ascii_digit());
        columns.pub_id = match i {
            1.. if is_ctime5(parts[i - 1]) => None,
            2.. if is_ctime5(parts[i - 2]) => Some(parts[i - 1].to_owned()),
            _ => None,
        };
        columns.action = Some(action.to_owned());
        columns.action_timestamp = Some(ts);
        columns.plot = Some(plot);
        columns
    }
}

/// `1700000000_tune_band` → (1700000000, "tune_band"), when the time fits
/// the column's 32-bit `INT`.
fn action_dir(name: &str) -> Option<(i64, &str)> {
    let (digits, action) = name.split_once('_')?;
    if digits.is_empty() || action.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ts: i64 = digits.parse().ok()?;
    i32::try_from(ts).ok()?;
    Some((ts, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(path: &str, expected: LayoutColumns) {
        assert_eq!(LayoutColumns::of(Path::new(path)), expected, "{path}");
    }

    fn layout(
        action: &str,
        ts: i64,
        plot: bool,
        pub_id: Option<&str>,
        format: &str,
    ) -> LayoutColumns {
        LayoutColumns {
            action: Some(action.into()),
            action_timestamp: Some(ts),
            plot: Some(plot),
            pub_id: pub_id.map(Into::into),
            format: Some(format.into()),
        }
    }

    #[test]
    fn the_layout_gives_action_time_plot_and_pub_id() {
        check(
            "/data/smurf_data/17000/crate1slot2/1700000000_tune_band/outputs/1700000123_tune.npy",
            layout(
                "tune_band",
                1_700_000_000,
                false,
                Some("crate1slot2"),
                "npy",
            ),
        );
        check(
            "/data/smurf_data/17000/crate1slot2/1700000000_take_iv/plots/iv_b1.png",
            layout("take_iv", 1_700_000_000, true, Some("crate1slot2"), "png"),
        );
        check(
            "/data/17000/1700000000_noise/outputs/noise.txt",
            layout("noise", 1_700_000_000, false, None, "txt"),
        );
        // Deeper below outputs/ still belongs to the action.
        check(
            "/d/17000/p/1700000000_tune/outputs/sub/dir/x.dat",
            layout("tune", 1_700_000_000, false, Some("p"), "dat"),
        );
        // No ctime5 directory: the action is known, the pub_id is not.
        check(
            "/scratch/1700000000_tune/outputs/x.npy",
            layout("tune", 1_700_000_000, false, None, "npy"),
        );
    }

    #[test]
    fn outside_the_layout_only_the_format_is_known() {
        let only_format = |format: Option<&str>| LayoutColumns {
            format: format.map(Into::into),
            ..LayoutColumns::default()
        };
        check("/data/misc/readme.txt", only_format(Some("txt")));
        check("/data/17000/crate1slot2/notes", only_format(None));
        // The action directory must hold outputs/ or plots/ directly.
        check(
            "/data/17000/1700000000_tune/other/x.npy",
            only_format(Some("npy")),
        );
        // outputs/ must be a directory above the file, not the file.
        check("/data/17000/1700000000_tune/outputs", only_format(None));
        check(
            "/data/17000/tune_1700/outputs/x.g3",
            only_format(Some("g3")),
        );
        // A time that does not fit the INT column is not an action time.
        check(
            "/data/99999999999_tune/outputs/x.npy",
            only_format(Some("npy")),
        );
        check("/data/17000/.hidden", only_format(None));
    }
}
