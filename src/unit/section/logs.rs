//! `[logs]`: log rotation.

use crate::unit::decode::{Decoder, Field};
use crate::unit::file::defaults;
use crate::unit::format_size;
use crate::unit::spec::LogSpec;

pub(crate) fn decode_logs(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<LogSpec> {
    let mut t = f.table(d)?;
    let mut logs = LogSpec {
        max_size: defaults::LOG_MAX_SIZE,
        max_files: defaults::LOG_MAX_FILES,
    };
    if let Some(f) = t.take(d, "max_size") {
        if let Some(v) = f.size(d) {
            if v < defaults::LOG_MIN_SIZE {
                let min = format_size(defaults::LOG_MIN_SIZE);
                f.error(
                    d,
                    format!(
                        "`max_size` must be at least {min}, found {}",
                        format_size(v)
                    ),
                    None,
                );
            } else {
                logs.max_size = v;
            }
        }
    }
    if let Some(v) = t
        .take(d, "max_files")
        .and_then(|f| f.u32(d, 0, defaults::LOG_MAX_FILES_LIMIT))
    {
        logs.max_files = v;
    }
    t.end(d);
    Some(logs)
}
