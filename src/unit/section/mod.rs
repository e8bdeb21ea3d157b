//! One decoder per part of the unit file, each over a [`Table`](super::decode::Table) cursor.
//!
//! A new section (`[container]`, `[[route]]`, `[deploy]`) is one more file here with a
//! `decode_*` function, one `take` in `file::decode`, and its keys in `KEYS` and docs/units.md.

mod container;
mod deploy;
mod env;
mod health;
mod logs;
mod process;
mod rate_limit;
mod restart;
mod route;
mod top;
mod watch;

pub(crate) use container::decode_container;
pub(crate) use deploy::decode_deploy;
pub(crate) use env::{
    decode_env, decode_profiles, reserved_env_hint, valid_env_name, ENV_NAME_RULE,
};
pub(crate) use health::decode_health;
pub(crate) use logs::decode_logs;
pub(crate) use process::decode_process;
pub(crate) use restart::decode_restart;
pub(crate) use route::decode_routes;
pub(crate) use top::{decode_depends_on, decode_instances, decode_port};
pub(crate) use watch::decode_watch;
