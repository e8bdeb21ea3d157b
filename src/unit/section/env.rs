//! `[env]` and `[profile.<name>.env]`: environment variables.

use std::collections::BTreeMap;

use toml::de::DeValue;

use crate::unit::decode::{scalar_text, Decoder, Field};
use crate::unit::file::{Profile, NAME_RULE, RESERVED_ENV};
use crate::unit::valid_unit_name;

/// Environment variable names: a letter or `_`, then letters, digits and `_`.
pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) const ENV_NAME_RULE: &str =
    "names are letters, digits and `_`, and do not start with a digit";

/// The hint for a reserved variable name.
pub(crate) fn reserved_env_hint(name: &str) -> String {
    if name == "PORT" {
        "chain sets PORT for each instance; choose the port with the top-level `port` key".into()
    } else {
        "chain sets CHAIN_UNIT, CHAIN_INSTANCE and CHAIN_INSTANCE_UID for each instance".into()
    }
}

pub(crate) fn decode_env(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let hint = match f.value.get_ref() {
        DeValue::Array(_) => Some("write [env] with one KEY = \"value\" per line".to_string()),
        _ => None,
    };
    let Some(mut t) = f.table_with(d, hint) else {
        return env;
    };
    for var in t.take_rest() {
        if !valid_env_name(var.name) {
            var.key_error(
                d,
                format!("invalid environment variable name `{}`", var.name),
                Some(ENV_NAME_RULE.into()),
            );
            continue;
        }
        if RESERVED_ENV.contains(&var.name) {
            var.key_error(
                d,
                format!("`{}` is reserved", var.name),
                Some(reserved_env_hint(var.name)),
            );
            continue;
        }
        let value = match var.value.get_ref() {
            DeValue::String(_) => var.string(d),
            DeValue::Array(_) => {
                let message = format!(
                    "expected a string, number or boolean, found {}",
                    var.found(d)
                );
                var.error(
                    d,
                    message,
                    Some("join the items into one string, e.g. \"a,b\"".into()),
                );
                None
            }
            DeValue::Table(_) => {
                let message = format!(
                    "expected a string, number or boolean, found {}",
                    var.found(d)
                );
                let hint = if valid_unit_name(var.name) && t.path() == "env" {
                    format!("for a named env profile write [profile.{}.env]", var.name)
                } else {
                    "[env] holds KEY = \"value\" pairs".into()
                };
                var.error(d, message, Some(hint));
                None
            }
            _ => scalar_text(var.value),
        };
        if let Some(value) = value {
            env.insert(var.name.to_string(), value);
        }
    }
    env
}

pub(crate) fn decode_profiles(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    let Some(mut t) = f.table(d) else {
        return profiles;
    };
    for entry in t.take_rest() {
        if !valid_unit_name(entry.name) {
            entry.key_error(
                d,
                format!("invalid profile name {:?}", entry.name),
                Some(NAME_RULE.into()),
            );
            continue;
        }
        let hint = Some(format!(
            "write [profile.{}.env] with KEY = \"value\" lines",
            entry.name
        ));
        let Some(mut pt) = entry.table_with(d, hint) else {
            continue;
        };
        let env = pt
            .take(d, "env")
            .map(|f| decode_env(d, &f))
            .unwrap_or_default();
        pt.end(d);
        profiles.insert(
            entry.name.to_string(),
            Profile {
                env,
                pos: d.pos(entry.key_span.start),
            },
        );
    }
    profiles
}
