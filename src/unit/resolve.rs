//! [`resolve`]: a parsed [`UnitFile`] plus the context of this apply (profile, CPU count) and the
//! contents of its env files becomes the [`UnitSpec`] the supervisor runs. Pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::envfile::parse_env_file;
use super::error::UnitError;
use super::file::{Instances, UnitFile};
use super::spec::{Dependency, PortSpec, ProcessConfig, UnitSpec, WatchSpec};

/// What resolving depends on besides the file.
#[derive(Debug, Clone, Default)]
pub struct ResolveCtx {
    /// The env profile to apply (`[profile.<name>.env]`), for units that define it.
    pub profile: Option<String>,
    /// What `instances = "max"` means; 0 counts as 1.
    pub cpus: u32,
    /// `chainctl deploy --set key=value` overrides, per unit, applied to the file's TOML
    /// before it is parsed (so they are validated like the file).
    pub overrides: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

/// Resolves `file` into a [`UnitSpec`]. Pure.
///
/// `env_files` maps each absolute env file path (the `path` of [`UnitFile::process`]'s
/// `env_files`) to its contents; `None` means it could not be read, which is an error at the
/// `env_file` key.
///
/// # Errors
///
/// Env files that are missing or have bad lines (reported at the env file's own line), and a
/// port setting that does not fit the resolved instance count.
pub fn resolve(
    file: &UnitFile,
    ctx: &ResolveCtx,
    env_files: &BTreeMap<PathBuf, Option<String>>,
) -> Result<UnitSpec, Vec<UnitError>> {
    resolve_with(file, ctx, &|p: &Path| match env_files.get(p) {
        Some(Some(text)) => Ok(text.as_str()),
        Some(None) | None => Err(None),
    })
}

/// An env file's text, or why it could not be read (`None`: no reason known).
pub(crate) type EnvSource<'t> = Result<&'t str, Option<String>>;

pub(crate) fn resolve_with<'t>(
    file: &UnitFile,
    ctx: &ResolveCtx,
    env_file: &dyn Fn(&Path) -> EnvSource<'t>,
) -> Result<UnitSpec, Vec<UnitError>> {
    let mut errors = Vec::new();
    let instances = match file.instances {
        Instances::Count(n) => n,
        Instances::Max => ctx.cpus.max(1),
    };

    let mut env = BTreeMap::new();
    for f in &file.process.env_files {
        match env_file(&f.path) {
            Ok(text) => {
                let (vars, problems) = parse_env_file(&f.shown, text);
                env.extend(vars);
                errors.extend(problems);
            }
            Err(reason) => errors.push(UnitError::at(
                &file.path,
                f.pos,
                if file.container.is_some() {
                    "container.env_file"
                } else {
                    "process.env_file"
                },
                match reason {
                    Some(reason) => format!("cannot read env file {}: {reason}", f.shown.display()),
                    None => format!("cannot read env file {}", f.shown.display()),
                },
                Some("env_file paths are relative to the unit file's directory".into()),
            )),
        }
    }
    env.extend(file.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let profile = ctx
        .profile
        .as_ref()
        .and_then(|name| file.profiles.get_key_value(name));
    if let Some((_, p)) = profile {
        env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    let port_error = |message: String, hint: &str| {
        UnitError::at(
            &file.path,
            file.port_pos,
            "port",
            message,
            Some(hint.to_string()),
        )
    };
    match file.port {
        PortSpec::Fixed { base } if instances > 0 && u32::from(base) + instances - 1 > 65535 => {
            errors.push(port_error(
                format!(
                    "port {base} with {instances} instances needs ports up to {}, past 65535",
                    u32::from(base) + instances - 1
                ),
                "lower the port or the number of instances",
            ));
        }
        PortSpec::Range { start, end }
            if u32::from(end).saturating_sub(start.into()) + 1 < instances =>
        {
            errors.push(port_error(
                format!(
                    "port range {start}-{end} has {} ports for {instances} instances",
                    u32::from(end).saturating_sub(start.into()) + 1
                ),
                "widen the range or lower the number of instances",
            ));
        }
        _ => {}
    }

    if !errors.is_empty() {
        // Unit file problems first, then each env file's, each in position order.
        errors.sort_by(|a, b| {
            (a.file != file.path, &a.file, a.pos()).cmp(&(b.file != file.path, &b.file, b.pos()))
        });
        return Err(errors);
    }

    let p = &file.process;
    Ok(UnitSpec {
        name: file.name.clone(),
        description: file.description.clone(),
        instances,
        port: file.port,
        depends_on: file
            .depends_on
            .iter()
            .map(|d| Dependency {
                unit: d.unit.clone(),
                condition: d.condition,
            })
            .collect(),
        process: ProcessConfig {
            command: p.command.clone(),
            args: p.args.clone(),
            cwd: p.cwd.clone(),
            user: p.user.clone(),
            group: p.group.clone(),
            stop_signal: p.stop_signal.clone(),
            kill_timeout: p.kill_timeout,
            max_memory: p.max_memory,
            listen_timeout: p.listen_timeout,
        },
        env,
        profile: profile.map(|(name, _)| name.clone()),
        restart: file.restart.clone(),
        health: file.health.clone(),
        watch: file
            .watch
            .as_ref()
            .filter(|w| w.enabled)
            .map(|w| WatchSpec {
                paths: w.paths.clone(),
                ignore: w.ignore.clone(),
                debounce: w.debounce,
            }),
        logs: file.logs,
        routes: file.routes.clone(),
        deploy: file.deploy.clone(),
        container: file.container.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::parse;

    fn file(text: &str) -> UnitFile {
        parse(Path::new("/srv/units/web.toml"), text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn env_files(entries: &[(&str, Option<&str>)]) -> BTreeMap<PathBuf, Option<String>> {
        entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.map(str::to_string)))
            .collect()
    }

    const WEB: &str = r#"
instances = "max"
[process]
command = "./server"
cwd = "../app"
env_file = [".env", "shared/.env"]
[env]
A = "env"
B = "env"
[profile.staging.env]
B = "staging"
C = 3
[watch]
paths = ["src", "/etc/web"]
"#;

    /// Env files, then [env], then the active profile: later sources win; the profile is recorded.
    #[test]
    fn env_merge_order_and_profile() {
        let f = file(WEB);
        let files = env_files(&[
            ("/srv/units/.env", Some("A=file\nD=file\n")),
            ("/srv/units/shared/.env", Some("D=shared\nE=shared\n")),
        ]);
        let ctx = ResolveCtx {
            profile: Some("staging".into()),
            cpus: 4,
            ..Default::default()
        };
        let spec = resolve(&f, &ctx, &files).unwrap();
        let env: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("A", "env"),
                ("B", "staging"),
                ("C", "3"),
                ("D", "shared"),
                ("E", "shared")
            ]
        );
        assert_eq!(spec.profile.as_deref(), Some("staging"));

        // A profile the unit does not define changes nothing and is not recorded.
        let ctx = ResolveCtx {
            profile: Some("production".into()),
            cpus: 4,
            ..Default::default()
        };
        let spec = resolve(&f, &ctx, &files).unwrap();
        assert_eq!(spec.env["B"], "env");
        assert_eq!(spec.profile, None);
    }

    /// "max" becomes the CPU count (at least 1); paths are absolute and normalised.
    #[test]
    fn instances_and_paths() {
        let f = file(WEB);
        let files = env_files(&[
            ("/srv/units/.env", Some("")),
            ("/srv/units/shared/.env", Some("")),
        ]);
        let spec = resolve(
            &f,
            &ResolveCtx {
                profile: None,
                cpus: 8,
                ..Default::default()
            },
            &files,
        )
        .unwrap();
        assert_eq!(spec.instances, 8);
        assert_eq!(
            resolve(&f, &ResolveCtx::default(), &files)
                .unwrap()
                .instances,
            1
        );
        assert_eq!(spec.process.cwd, PathBuf::from("/srv/app"));
        assert_eq!(spec.process.command, "./server");
        let watch = spec.watch.unwrap();
        assert_eq!(
            watch.paths,
            [PathBuf::from("/srv/app/src"), PathBuf::from("/etc/web")]
        );
    }

    /// An unreadable env file is reported at the env_file entry; a bad line at the env file's line.
    #[test]
    fn env_file_problems() {
        let f = file(WEB);
        let files = env_files(&[
            ("/srv/units/.env", Some("A=1\nbad line\n")),
            ("/srv/units/shared/.env", None),
        ]);
        let errors: Vec<String> = resolve(&f, &ResolveCtx::default(), &files)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string().lines().next().unwrap().to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "/srv/units/web.toml:6:21: process.env_file: cannot read env file /srv/units/shared/.env",
                "/srv/units/.env:2:1: expected KEY=VALUE, found \"bad line\"",
            ]
        );
    }

    /// Fixed ports must fit every instance below 65536, and ranges must hold every instance.
    #[test]
    fn ports_fit_instances() {
        let none = BTreeMap::new();
        let ctx = ResolveCtx {
            profile: None,
            cpus: 4,
            ..Default::default()
        };
        let f = file("instances = \"max\"\nport = 65534\n[process]\ncommand = \"x\"\n");
        let e = resolve(&f, &ctx, &none).unwrap_err();
        assert_eq!(
            e[0].message,
            "port 65534 with 4 instances needs ports up to 65537, past 65535"
        );
        assert_eq!((e[0].line, e[0].column), (2, 8));
        let f = file("instances = 3\nport = \"8100-8101\"\n[process]\ncommand = \"x\"\n");
        let e = resolve(&f, &ctx, &none).unwrap_err();
        assert_eq!(
            e[0].message,
            "port range 8100-8101 has 2 ports for 3 instances"
        );
        let f = file("instances = 2\nport = \"8100-8101\"\n[process]\ncommand = \"x\"\n");
        assert!(resolve(&f, &ctx, &none).is_ok());
        let f = file("instances = 0\nport = 65535\n[process]\ncommand = \"x\"\n");
        assert!(resolve(&f, &ctx, &none).is_ok());
    }
}
