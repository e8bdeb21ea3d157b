//! Unit files: parse TOML unit files into [`UnitSpec`]s, validate a whole set, and report every
//! problem with its file, line, column, key path and, where possible, a hint.
//!
//! The pipeline is [`parse`] (text → [`UnitFile`]), [`resolve`] (file + env files + profile and
//! CPU count → [`UnitSpec`]) and [`validate_set`] (problems across units); all three are pure.
//! [`load_dir`] and [`load_file`] are the only functions that touch the disk.
//! This module knows nothing about running processes, the store or the API; docs/units.md is the
//! user-facing reference of the format, and [`KEYS`] lists every key it documents.
//!
//! Layout: `decode` is the reusable cursor over the spanned TOML tree, `file` decodes each
//! section with it, `syntax` reports TOML syntax errors, `section` holds one decoder per section, `hint` builds "did you mean" hints,
//! `quantity` reads durations and sizes, `envfile` reads env files.

pub(crate) mod decode;
mod envfile;
pub(crate) mod error;
mod file;
mod hint;
mod load;
mod quantity;
mod resolve;
mod revision;
mod section;
mod set;
pub mod spec;
pub(crate) mod syntax;

pub use error::{Pos, UnitError};
pub use file::{
    defaults, parse, DependsOn, EnvFileRef, Instances, ProcessSection, Profile, UnitFile,
    WatchSection, KEYS, RESERVED_ENV, STOP_SIGNALS,
};
pub use load::{apply_overrides, load_dir, load_file, LoadReport, Loaded};
pub use quantity::{format_duration, format_size, parse_duration, parse_size};
pub use resolve::{resolve, ResolveCtx};
pub use set::validate_set;
pub use spec::*;

/// Unit (and profile) names: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
pub fn valid_unit_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are 1 to 64 ASCII letters, digits, `-` and `_`, starting with a letter or digit.
    #[test]
    fn unit_names() {
        for ok in ["web", "a", "0", "web-2", "my_app", "A-b_C", &"x".repeat(64)] {
            assert!(valid_unit_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "_web",
            "web.app",
            "web app",
            "wéb",
            "web/x",
            &"x".repeat(65),
        ] {
            assert!(!valid_unit_name(bad), "{bad}");
        }
    }
}
