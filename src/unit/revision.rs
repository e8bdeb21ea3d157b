//! [`UnitSpec::revision`]: the content hash that names a version of a unit.

use sha2::{Digest, Sha256};

use super::spec::{Revision, UnitSpec};

impl UnitSpec {
    /// SHA-256 of the spec's canonical JSON (`serde_json::to_vec`), as lowercase hex.
    ///
    /// The JSON is canonical because every map in the spec is a `BTreeMap` and fields serialise
    /// in declaration order; so equal specs hash equally and any change gives a new revision.
    pub fn revision(&self) -> Revision {
        let json =
            serde_json::to_vec(self).expect("a UnitSpec serialises: every map key is a string");
        let digest = Sha256::digest(&json);
        Revision(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use crate::unit::{
        parse, resolve, HealthCheck, PortSpec, ResolveCtx, RestartPolicy, UnitSpec, WatchSpec,
    };

    fn spec() -> UnitSpec {
        let text = r#"
description = "web"
instances = 2
port = 8100
depends_on = { db = "healthy" }
[process]
command = "./server"
args = ["--flag"]
max_memory = "1G"
[env]
A = "1"
[health]
type = "http"
[watch]
paths = ["src"]
"#;
        let file = parse(Path::new("/srv/units/web.toml"), text).unwrap();
        resolve(&file, &ResolveCtx::default(), &BTreeMap::new()).unwrap()
    }

    /// The same spec always hashes to the same 64-hex-digit revision.
    #[test]
    fn stable() {
        let a = spec().revision();
        assert_eq!(a, spec().revision());
        assert_eq!(a.0.len(), 64);
        assert!(a
            .0
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a.short().len(), 12);
    }

    /// Changing any field changes the revision.
    #[test]
    fn every_field_counts() {
        let base = spec();
        type Change = (&'static str, Box<dyn Fn(&mut UnitSpec)>);
        let changes: Vec<Change> = vec![
            ("name", Box::new(|s| s.name.push('x'))),
            ("description", Box::new(|s| s.description.push('x'))),
            ("instances", Box::new(|s| s.instances += 1)),
            ("port", Box::new(|s| s.port = PortSpec::Auto)),
            ("depends_on", Box::new(|s| s.depends_on.clear())),
            ("command", Box::new(|s| s.process.command.push('x'))),
            ("args", Box::new(|s| s.process.args.push("x".into()))),
            ("cwd", Box::new(|s| s.process.cwd.push("x"))),
            ("user", Box::new(|s| s.process.user = Some("x".into()))),
            ("group", Box::new(|s| s.process.group = Some("x".into()))),
            (
                "stop_signal",
                Box::new(|s| s.process.stop_signal = "SIGINT".into()),
            ),
            (
                "kill_timeout",
                Box::new(|s| s.process.kill_timeout += Duration::from_millis(1)),
            ),
            ("max_memory", Box::new(|s| s.process.max_memory = None)),
            (
                "listen_timeout",
                Box::new(|s| s.process.listen_timeout += Duration::from_millis(1)),
            ),
            (
                "env",
                Box::new(|s| {
                    s.env.insert("B".into(), "2".into());
                }),
            ),
            ("profile", Box::new(|s| s.profile = Some("p".into()))),
            (
                "restart.policy",
                Box::new(|s| s.restart.policy = RestartPolicy::Never),
            ),
            (
                "restart.delay",
                Box::new(|s| s.restart.delay += Duration::from_millis(1)),
            ),
            (
                "restart.max_delay",
                Box::new(|s| s.restart.max_delay += Duration::from_millis(1)),
            ),
            (
                "restart.min_uptime",
                Box::new(|s| s.restart.min_uptime += Duration::from_millis(1)),
            ),
            (
                "restart.max_restarts",
                Box::new(|s| s.restart.max_restarts += 1),
            ),
            (
                "restart.window",
                Box::new(|s| s.restart.window += Duration::from_millis(1)),
            ),
            (
                "health.check",
                Box::new(|s| s.health.as_mut().unwrap().check = HealthCheck::Tcp),
            ),
            (
                "health.interval",
                Box::new(|s| s.health.as_mut().unwrap().interval += Duration::from_millis(1)),
            ),
            (
                "health.timeout",
                Box::new(|s| s.health.as_mut().unwrap().timeout += Duration::from_millis(1)),
            ),
            (
                "health.retries",
                Box::new(|s| s.health.as_mut().unwrap().retries += 1),
            ),
            (
                "health.start_period",
                Box::new(|s| s.health.as_mut().unwrap().start_period += Duration::from_millis(1)),
            ),
            (
                "health.start_interval",
                Box::new(|s| s.health.as_mut().unwrap().start_interval += Duration::from_millis(1)),
            ),
            (
                "health.restart_after",
                Box::new(|s| s.health.as_mut().unwrap().restart_after += 1),
            ),
            ("health", Box::new(|s| s.health = None)),
            (
                "watch.paths",
                Box::new(|s| s.watch.as_mut().unwrap().paths.clear()),
            ),
            (
                "watch.ignore",
                Box::new(|s| s.watch.as_mut().unwrap().ignore.push("*".into())),
            ),
            (
                "watch.debounce",
                Box::new(|s| s.watch.as_mut().unwrap().debounce += Duration::from_millis(1)),
            ),
            ("watch", Box::new(|s| s.watch = None::<WatchSpec>)),
            ("logs.max_size", Box::new(|s| s.logs.max_size += 1)),
            ("logs.max_files", Box::new(|s| s.logs.max_files += 1)),
        ];
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(base.revision());
        for (what, change) in changes {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(s, base, "{what} did not change the spec");
            assert!(
                seen.insert(s.revision()),
                "{what} did not change the revision"
            );
        }
    }

    /// The spec round-trips through its JSON form, so a stored revision can be recomputed.
    #[test]
    fn json_round_trip() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        let back: UnitSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.revision(), s.revision());
    }
}
