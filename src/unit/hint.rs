//! "Did you mean" hints: edit distance, spelling normalisation and the PM2/compose → chain key map.

use super::file::KEYS;

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions), over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `killTimeout`, `kill-timeout` and `KILL_TIMEOUT` all normalise to `killtimeout`.
pub(crate) fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-' && *c != ' ')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The candidate closest to `word`: a spelling variant first (case, `-`/`_`), then the smallest
/// edit distance when it is small enough to be a typo (at most a third of the word, at least 1).
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let norm = normalize(word);
    if norm.is_empty() {
        return None;
    }
    if let Some(c) = candidates.iter().find(|c| normalize(c) == norm) {
        return Some(c);
    }
    let limit = (norm.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(&norm, &normalize(c)), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Where chain writes logs, for hints on PM2's log keys.
const LOGS_HINT: &str =
    "chain writes each unit's logs under DIR/logs (DIR is chaind's data directory); see [logs] for rotation";

/// Hints for keys that users bring from PM2 ecosystem files and compose files.
/// `section` is the schema path of the table the key was found in (`""` at top level).
fn alias(section: &str, key: &str) -> Option<String> {
    let norm = normalize(key);
    let here = |ours: &str, ours_section: &str| {
        if section == ours_section {
            format!("did you mean `{ours}`? (PM2's `{key}`)")
        } else if ours_section.is_empty() {
            format!("PM2's `{key}` is the top-level `{ours}` in chain")
        } else {
            format!("PM2's `{key}` is `{ours}` in [{ours_section}]")
        }
    };
    if section == "container" {
        let hint = match norm.as_str() {
            "args" => "put the arguments in `command`, as an array: command = [\"serve\", \"--port\", \"80\"]",
            "cwd" | "workdir" | "directory" => "did you mean `working_dir`?",
            "maxmemory" | "memlimit" | "maxmemoryrestart" => {
                "did you mean `memory`? (the engine enforces it; the container is OOM-killed above it)"
            }
            "group" => "give the group with the user: user = \"uid:gid\"",
            "ports" | "expose" => {
                "write the port the app listens on as port = 80; the top-level `port` says whether it is also published on the host"
            }
            "containername" | "hostname" => {
                "chain names each instance's container itself; other units reach it by the unit name on chain's network"
            }
            "restart" => "the restart policy is `policy` in [restart]",
            "dependson" => "`depends_on` is a top-level key: top-level keys must come before the first [section] header",
            "build" => "chain runs images; build them first (docker build -t NAME .) and write image = \"NAME\"",
            _ => "",
        };
        if !hint.is_empty() {
            return Some(hint.to_string());
        }
    }
    let hint = match norm.as_str() {
        "script" => here("command", "process"),
        "maxmemoryrestart" => here("max_memory", "process"),
        "restartdelay" => here("delay", "restart"),
        "ignorewatch" => here("ignore", "watch"),
        "watchdelay" => here("debounce", "watch"),
        "killsignal" => here("stop_signal", "process"),
        "name" => "the unit name is the file name: web.toml is unit `web`".into(),
        "execmode" => "chain has no cluster mode: every instance is its own process with its own PORT; set the top-level `instances`".into(),
        "autorestart" => "use [restart] policy = \"always\", \"on-failure\" or \"never\" (PM2's autorestart = false is \"never\")".into(),
        "errorfile" | "outfile" | "logfile" | "logdateformat" | "mergelogs" | "combinelogs" | "time"
        | "pidfile" | "errfile" => LOGS_HINT.into(),
        "expbackoffrestartdelay" => {
            "chain always backs off exponentially: set `delay` and `max_delay` in [restart]".into()
        }
        "interpreter" | "interpreterargs" | "nodeargs" => {
            "put the interpreter in `command` and the script in `args`, e.g. command = \"node\" and args = [\"server.js\"]".into()
        }
        "waitready" => "add a [health] check: an instance is ready once it passes".into(),
        "shutdownwithmessage" => "chain stops an instance with the `stop_signal` in [process]".into(),
        "environment" => "write environment variables in [env], one KEY = \"value\" per line".into(),
        "workingdir" | "workdir" | "directory" => "the working directory is `cwd` in [process]".into(),
        "healthcheck" => "write a [health] section with type = \"http\", \"tcp\" or \"exec\"".into(),
        "instance" | "replicas" | "scale" | "count" if !section.is_empty() => {
            "`instances` is a top-level key: top-level keys must come before the first [section] header".into()
        }
        "replicas" | "scale" | "count" => "did you mean `instances`?".into(),
        _ => {
            let name = key.strip_prefix("env_")?;
            if name.is_empty() || name == "file" || !section.is_empty() {
                return None;
            }
            format!("PM2's `{key}` is a named env profile in chain: write [profile.{name}.env] and pick it at apply time")
        }
    };
    Some(hint)
}

/// The hint for an unknown key `key` in the table with schema path `section`, whose valid keys are `known`.
pub(crate) fn unknown_key_hint(section: &str, key: &str, known: &[&str]) -> Option<String> {
    if let Some(hint) = alias(section, key) {
        return Some(hint);
    }
    if section == "profile.<name>" && key != "env" && closest(key, known).is_none() {
        return Some("a profile's variables go in its env table: [profile.<name>.env]".into());
    }
    let norm = normalize(key);
    if let Some(k) = known.iter().find(|k| normalize(k) == norm) {
        return Some(format!("did you mean `{k}`?"));
    }
    // A valid key of another section: the classic TOML mistake is a top-level key written after a header.
    let elsewhere = KEYS.iter().filter_map(|path| {
        let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
        (normalize(last) == norm && parent != section && !parent.contains('<'))
            .then_some((parent, last))
    });
    let elsewhere: Vec<(&str, &str)> = elsewhere.collect();
    if let Some(&(parent, last)) = elsewhere.first() {
        return Some(if parent.is_empty() {
            format!("`{last}` is a top-level key: top-level keys must come before the first [section] header")
        } else {
            format!("`{last}` belongs in [{parent}]")
        });
    }
    closest(key, known).map(|k| format!("did you mean `{k}`?"))
}

/// The hint for a string that is not one of `accepted` (`"on_failure"` → `did you mean "on-failure"?`).
/// `aliases` maps other tools' spellings to ours (`"unless-stopped"` → `"always"`).
pub(crate) fn choice_hint(
    value: &str,
    accepted: &[&str],
    aliases: &[(&str, &str)],
) -> Option<String> {
    let norm = normalize(value);
    if let Some((_, ours)) = aliases.iter().find(|(theirs, _)| normalize(theirs) == norm) {
        return Some(format!("did you mean \"{ours}\"?"));
    }
    closest(value, accepted).map(|c| format!("did you mean \"{c}\"?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edit distance counts insertions, deletions, substitutions and adjacent swaps.
    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kill_timout", "kill_timeout"), 1);
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("polciy", "policy"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    /// Typos and other spellings find the right key; unrelated words find nothing.
    #[test]
    fn closest_keys() {
        let keys = [
            "command",
            "kill_timeout",
            "listen_timeout",
            "max_memory",
            "cwd",
        ];
        assert_eq!(closest("kill_timout", &keys), Some("kill_timeout"));
        assert_eq!(closest("killTimeout", &keys), Some("kill_timeout"));
        assert_eq!(closest("kill-timeout", &keys), Some("kill_timeout"));
        assert_eq!(closest("comand", &keys), Some("command"));
        assert_eq!(closest("cwdd", &keys), Some("cwd"));
        assert_eq!(closest("banana", &keys), None);
        assert_eq!(closest("", &keys), None);
        assert_eq!(closest("x", &keys), None);
    }

    /// Unknown keys get PM2 translations, misplaced-key hints and typo hints, in that order.
    #[test]
    fn unknown_key_hints() {
        let process = ["command", "args", "kill_timeout", "max_memory"];
        let hint = |section, key, known: &[&str]| {
            unknown_key_hint(section, key, known).unwrap_or_default()
        };
        assert_eq!(
            hint("process", "kill_timout", &process),
            "did you mean `kill_timeout`?"
        );
        assert_eq!(
            hint("process", "killTimeout", &process),
            "did you mean `kill_timeout`?"
        );
        assert_eq!(
            hint("process", "script", &process),
            "did you mean `command`? (PM2's `script`)"
        );
        assert_eq!(
            hint("", "script", &[]),
            "PM2's `script` is `command` in [process]"
        );
        assert_eq!(
            hint("process", "max_memory_restart", &process),
            "did you mean `max_memory`? (PM2's `max_memory_restart`)"
        );
        assert_eq!(
            hint("process", "min_uptime", &process),
            "`min_uptime` belongs in [restart]"
        );
        assert!(hint("process", "port", &process).starts_with("`port` is a top-level key"));
        assert!(
            hint("process", "error_file", &process).starts_with("chain writes each unit's logs")
        );
        assert!(hint("", "env_production", &[]).contains("[profile.production.env]"));
        assert_eq!(unknown_key_hint("process", "zzzzzz", &process), None);
    }

    /// Enum values get aliases from other tools and typo corrections.
    #[test]
    fn choice_hints() {
        let policies = ["always", "on-failure", "never"];
        let aliases = [("unless-stopped", "always"), ("no", "never")];
        assert_eq!(
            choice_hint("on_failure", &policies, &aliases).as_deref(),
            Some("did you mean \"on-failure\"?")
        );
        assert_eq!(
            choice_hint("unless-stopped", &policies, &aliases).as_deref(),
            Some("did you mean \"always\"?")
        );
        assert_eq!(
            choice_hint("alwys", &policies, &aliases).as_deref(),
            Some("did you mean \"always\"?")
        );
        assert_eq!(choice_hint("sometimes", &policies, &aliases), None);
    }
}
