//! Readers for `/proc/PID/*`: process start time, parent, process group, state and
//! environment, plus the list of live pids.
//!
//! Everything here is read-only and tolerant: a process may vanish between two reads, and
//! its files may be unreadable (another user's process) or malformed, so every reader returns
//! `None`, `false` or an empty list instead of an error, and never panics. This module never
//! signals, waits for or otherwise touches a process.

use std::fs;

/// The fields of `/proc/PID/stat` that chain uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub state: u8,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: the process group id.
    pub pgid: i32,
    /// Field 6: the session id.
    pub sid: i32,
    /// Field 19: the nice value (-20..19); in `/proc/PID/task/TID/stat`, the thread's own.
    pub nice: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// True for a process that exited but was not reaped yet.
    pub fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Parses the contents of `/proc/PID/stat`.
///
/// The second field (`comm`) is the executable name in parentheses and may itself contain
/// spaces and `)`, so the fixed fields are taken after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let close = text.rfind(')')?;
    let rest = text.get(close + 1..)?;
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let state = *fields.first()?.as_bytes().first()?;
    Some(Stat {
        state,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        nice: fields.get(16)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The parsed `/proc/PID/stat` of a process, or `None` when it does not exist (or the file
/// cannot be read or parsed).
pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Start time of `pid` in clock ticks since boot (zombies included).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Parent pid of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.ppid)
}

/// Process group id of `pid`.
pub fn pgid(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.pgid)
}

/// True when `pid` exists and has not exited (a zombie counts as exited).
pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.is_zombie())
}

/// True when one entry of the NUL-separated `/proc/PID/environ` equals `needle` exactly
/// (for example `CHAIN_INSTANCE_UID=abc`, which must not match `CHAIN_INSTANCE_UID=abcd`).
/// Unreadable files (vanished processes, other users' processes, zombies) give `false`.
pub fn environ_contains(pid: i32, needle: &[u8]) -> bool {
    if pid <= 0 || needle.is_empty() {
        return false;
    }
    match fs::read(format!("/proc/{pid}/environ")) {
        Ok(bytes) => bytes.split(|b| *b == 0).any(|entry| entry == needle),
        Err(_) => false,
    }
}

/// Every pid listed in `/proc` (processes, not threads), in no particular order.
/// Direct children of `pid`, from `/proc/PID/task/*/children` (every thread's children).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `root` (when alive) and all its descendants, breadth first, at most `limit` pids.
pub fn descendants(root: i32, limit: usize) -> Vec<i32> {
    if root <= 0 || !is_alive(root) {
        return Vec::new();
    }
    let mut out = vec![root];
    let mut seen: std::collections::HashSet<i32> = out.iter().copied().collect();
    let mut i = 0;
    while i < out.len() && out.len() < limit {
        for k in children(out[i]) {
            if out.len() >= limit {
                break;
            }
            if seen.insert(k) {
                out.push(k);
            }
        }
        i += 1;
    }
    out
}

pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

/// Parses the `Gid:` (real and effective) and `Groups:` lines of `/proc/PID/status`.
pub fn parse_status_groups(text: &str) -> Vec<u32> {
    let mut gids = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Gid:") {
            gids.extend(
                rest.split_ascii_whitespace()
                    .take(2)
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            gids.extend(
                rest.split_ascii_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    gids.sort_unstable();
    gids.dedup();
    gids
}

/// Primary and supplementary gids of a live process (empty when it cannot be read).
pub fn groups(pid: i32) -> Vec<u32> {
    if pid <= 0 {
        return Vec::new();
    }
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => parse_status_groups(&text),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comm field may hold spaces and parentheses; fields are counted after the last `)`.
    #[test]
    fn stat_with_tricky_comm() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 25 5 1 0 98765 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        let stat = parse_stat(text).expect("parses");
        assert_eq!(
            stat,
            Stat {
                state: b'S',
                ppid: 1,
                pgid: 1234,
                sid: 1234,
                nice: 5,
                start_time: 98765
            }
        );
    }

    /// Truncated or garbage stat contents give `None`, never a panic.
    #[test]
    fn stat_garbage() {
        for text in ["", ")", "1 (x", "1 (x) S 1 2", "1 (x) S a b c", "(((("] {
            assert_eq!(parse_stat(text), None, "{text:?}");
        }
    }

    /// Our own process is visible with a start time, a parent and a group.
    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        assert!(all_pids().contains(&me));
        assert!(start_time(me).is_some());
        assert!(ppid(me).is_some());
        assert!(pgid(me).is_some());
        assert!(is_alive(me));
        assert!(!groups(me).is_empty());
        assert_eq!(start_time(-5), None);
        assert_eq!(start_time(i32::MAX), None);
    }

    /// Environment entries match whole `KEY=VALUE` strings only.
    #[test]
    fn environ_whole_entries() {
        let me = std::process::id() as i32;
        let path = std::env::var("PATH").expect("tests run with PATH set");
        let entry = format!("PATH={path}");
        assert!(environ_contains(me, entry.as_bytes()));
        assert!(!environ_contains(me, b"PATH="));
        assert!(!environ_contains(me, format!("{entry}x").as_bytes()));
        assert!(!environ_contains(i32::MAX, entry.as_bytes()));
    }

    /// `Gid:` gives real and effective gids; `Groups:` adds the supplementary ones.
    #[test]
    fn status_groups() {
        let text = "Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t10\t11\t12\t13\nGroups:\t4 24 10 \n";
        assert_eq!(parse_status_groups(text), vec![4, 10, 11, 24]);
        assert_eq!(parse_status_groups("Groups:\n"), Vec::<u32>::new());
    }
}
