//! Host facts: RSS and CPU of process trees (sysinfo), the CPU count, and user and group
//! lookups in the system databases (NSS, through libc's reentrant `get*_r` calls).
//!
//! Everything here reads; nothing starts, signals or changes a process. `Sampler::sample`
//! and the lookups block (they read `/proc` or may consult NSS services), so async callers
//! run them in `spawn_blocking`.

#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::driver::process::UserIds;
use crate::procfs;

/// Resource use of one process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Resident memory of every process in the tree, in bytes.
    pub rss_bytes: u64,
    /// CPU use over the interval since the previous sample, relative to one core (a tree
    /// busy on two cores shows 200). Zero on the first sample of a process.
    pub cpu_percent: f32,
}

/// Samples process trees. Keeps sysinfo's process table between calls, which CPU usage
/// needs (it is a difference over time).
pub struct Sampler {
    // `None` only if sysinfo could not initialise (it cannot fail on Linux today); every
    // sample is then empty.
    system: Option<System>,
    /// Pids sampled last time.
    last: HashSet<Pid>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let system = match System::new() {
            Ok(system) => Some(system),
            Err(e) => {
                tracing::warn!(error = %e, "process sampling unavailable");
                None
            }
        };
        Sampler {
            system,
            last: HashSet::new(),
        }
    }

    /// Returns, for each root pid still alive, the memory and CPU totals over the root and
    /// all its descendants. Only those trees are read: descendants are found through
    /// `/proc/PID/task/TID/children`, not by scanning every process on the host. Blocking.
    pub fn sample(&mut self, roots: &[i32]) -> HashMap<i32, Sample> {
        let mut samples = HashMap::new();
        let Some(system) = self.system.as_mut() else {
            return samples;
        };
        let trees: Vec<(i32, Vec<Pid>)> = roots
            .iter()
            .map(|&root| {
                let pids = procfs::descendants(root, TREE_LIMIT)
                    .into_iter()
                    .filter_map(|p| u32::try_from(p).ok().map(Pid::from_u32))
                    .collect();
                (root, pids)
            })
            .collect();
        let current: HashSet<Pid> = trees.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        // Processes seen last time but gone from every tree are refreshed once more, so that
        // sysinfo notices they exited and drops them (its table would otherwise only grow).
        let mut refresh: Vec<Pid> = current.iter().copied().collect();
        refresh.extend(self.last.difference(&current).copied());
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&refresh),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let processes = system.processes();
        for (root, pids) in &trees {
            if pids.is_empty() {
                continue;
            }
            let mut total = Sample::default();
            for pid in pids {
                if let Some(process) = processes.get(pid) {
                    total.rss_bytes += process.memory();
                    total.cpu_percent += process.cpu_usage();
                }
            }
            samples.insert(*root, total);
        }
        self.last = current;
        samples
    }
}

/// At most this many processes are counted in one tree (a fork bomb must not stall sampling).
const TREE_LIMIT: usize = 10_000;

/// Number of CPUs this process may run on (at least 1).
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Errors of user and group lookups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user {name} not found")]
    UnknownUser { name: String },
    #[error("group {name} not found")]
    UnknownGroup { name: String },
    #[error("invalid {what} name {name:?}")]
    InvalidName { what: &'static str, name: String },
    #[error("looking up {what} {name}")]
    Lookup {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Resolves a user name or numeric uid to its uid, primary gid and supplementary groups
/// (`getpwnam_r` / `getpwuid_r`, then `getgrouplist`). A uid without a passwd entry is an
/// error too: without one there is no primary group to run with.
pub fn lookup_user(name_or_uid: &str) -> Result<UserIds, Error> {
    let name_or_uid = name_or_uid.trim();
    let entry = match name_or_uid.parse::<u32>() {
        Ok(uid) => passwd_by_uid(uid, name_or_uid)?,
        Err(_) => passwd_by_name(name_or_uid)?,
    };
    let Some((name, uid, gid)) = entry else {
        return Err(Error::UnknownUser {
            name: name_or_uid.to_string(),
        });
    };
    let groups = group_list(&name, gid).map_err(|source| Error::Lookup {
        what: "groups of user",
        name: name_or_uid.to_string(),
        source,
    })?;
    Ok(UserIds { uid, gid, groups })
}

/// Resolves a group name to its gid (`getgrnam_r`). A number is taken as a gid as it is:
/// a gid needs no database entry to be usable.
pub fn lookup_group(name_or_gid: &str) -> Result<u32, Error> {
    let name_or_gid = name_or_gid.trim();
    if let Ok(gid) = name_or_gid.parse::<u32>() {
        return Ok(gid);
    }
    match group_by_name(name_or_gid)? {
        Some(gid) => Ok(gid),
        None => Err(Error::UnknownGroup {
            name: name_or_gid.to_string(),
        }),
    }
}

/// The gid of a group, `None` when it does not exist (or cannot be looked up).
///
/// For a daemon that asks once, at start: the answer comes from `getent group NAME` in a
/// child process. NSS modules (systemd, sssd, LDAP) load into whichever process calls them and
/// stay mapped for the rest of its life; in chaind, `libnss_systemd` and what its lookup
/// touches made up a tenth of the idle RSS. Without a usable `getent`, the lookup runs here.
pub fn group_id(name: &str) -> Option<u32> {
    if name.is_empty() || name.contains([':', '\n', '\0']) {
        return None;
    }
    let out = std::process::Command::new("getent")
        .args(["group", name])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => getent_gid(&String::from_utf8_lossy(&out.stdout), name),
        // 2: no such group.
        Ok(out) if out.status.code() == Some(2) => None,
        _ => group_by_name(name).ok().flatten(),
    }
}

/// The gid in `getent group` output (`name:password:gid:members`) for the line of `name`.
fn getent_gid(out: &str, name: &str) -> Option<u32> {
    out.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.trim().parse().ok()
    })
}

/// Primary (real and effective) and supplementary gids of a live process, from
/// `/proc/PID/status`; empty when the process cannot be read.
pub fn process_groups(pid: i32) -> Vec<u32> {
    procfs::groups(pid)
}

fn c_name(what: &'static str, name: &str) -> Result<CString, Error> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            what,
            name: name.to_string(),
        });
    }
    CString::new(name).map_err(|_| Error::InvalidName {
        what,
        name: name.to_string(),
    })
}

/// Start size for the string buffers of `get*_r`, and the most we grow them to.
const BUF_START: usize = 1024;
const BUF_MAX: usize = 1 << 20;

/// Calls a `getpw*_r`-style function with a growing buffer. `call` returns the function's
/// return code and whether a result was found; it must copy what it needs out of the buffer.
fn with_buffer<T>(
    what: &'static str,
    name: &str,
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, Error> {
    let mut size = BUF_START;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let (rc, found) = call(&mut buf);
        match rc {
            0 => return Ok(found),
            libc::ERANGE if size < BUF_MAX => size *= 4,
            // glibc reports "not found" as 0 with a null result, but some NSS modules use
            // these codes.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            rc => {
                return Err(Error::Lookup {
                    what,
                    name: name.to_string(),
                    source: io::Error::from_raw_os_error(rc),
                })
            }
        }
    }
}

/// `(name, uid, gid)` of a passwd entry.
type PasswdEntry = (CString, u32, u32);

fn passwd_from(pwd: &libc::passwd) -> PasswdEntry {
    // SAFETY: on success getpw*_r points `pw_name` at a NUL-terminated string inside the
    // caller's buffer, which is still alive here.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
    (name, pwd.pw_uid, pwd.pw_gid)
}

fn passwd_by_name(name: &str) -> Result<Option<PasswdEntry>, Error> {
    let c = c_name("user", name)?;
    with_buffer("user", name, |buf| {
        // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to be
        // overwritten by the call.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c` is NUL-terminated, `pwd` and
        // `result` are writable locals, and `buf` is writable for `buf.len()` bytes.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        let found = (rc == 0 && !result.is_null()).then(|| passwd_from(&pwd));
        (rc, found)
    })
}

fn passwd_by_uid(uid: u32, shown: &str) -> Result<Option<PasswdEntry>, Error> {
    with_buffer("user", shown, |buf| {
        // SAFETY: as in `passwd_by_name`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pwd` and `result` are writable locals and `buf` is writable for
        // `buf.len()` bytes.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        let found = (rc == 0 && !result.is_null()).then(|| passwd_from(&pwd));
        (rc, found)
    })
}

fn group_by_name(name: &str) -> Result<Option<u32>, Error> {
    let c = c_name("group", name)?;
    with_buffer("group", name, |buf| {
        // SAFETY: an all-zero group (null pointers, zero gid) is a valid value to be
        // overwritten by the call.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `c` is NUL-terminated, `grp` and `result` are writable locals, and `buf`
        // is writable for `buf.len()` bytes.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        let found = (rc == 0 && !result.is_null()).then_some(grp.gr_gid);
        (rc, found)
    })
}

/// Supplementary groups of `user` including `gid` (`getgrouplist`), sorted.
fn group_list(user: &CStr, gid: u32) -> io::Result<Vec<u32>> {
    let mut capacity: libc::c_int = 32;
    loop {
        let len = usize::try_from(capacity).unwrap_or(0);
        let mut groups: Vec<libc::gid_t> = vec![0; len];
        let mut count = capacity;
        // SAFETY: `user` is NUL-terminated, `groups` has room for `count` entries, and
        // `count` is a writable local.
        let rc = unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            groups.sort_unstable();
            groups.dedup();
            return Ok(groups);
        }
        // -1: too small; `count` now holds the number needed.
        if count <= capacity {
            if capacity >= 65_536 {
                return Err(io::Error::other("getgrouplist kept failing"));
            }
            capacity *= 2;
        } else {
            capacity = count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `group_id` (through `getent`) agrees with the in-process lookup, and misses are None.
    #[test]
    fn group_id_matches_nss() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("root"), group_by_name("root").unwrap());
        assert_eq!(group_id("no-such-group-chain-test"), None);
        assert_eq!(group_id(""), None);
        assert_eq!(group_id("root:x"), None);
    }

    #[test]
    fn getent_output() {
        assert_eq!(getent_gid("chain:x:998:alice,bob\n", "chain"), Some(998));
        assert_eq!(getent_gid("chainx:x:1:\nchain:x:7:\n", "chain"), Some(7));
        assert_eq!(getent_gid("chain:x:notanumber:\n", "chain"), None);
        assert_eq!(getent_gid("", "chain"), None);
    }

    /// root resolves by name and by uid, with gid 0 among its groups.
    #[test]
    fn root_user() {
        let by_name = lookup_user("root").expect("root exists");
        assert_eq!(by_name.uid, 0);
        assert_eq!(by_name.gid, 0);
        assert!(by_name.groups.contains(&0));
        assert_eq!(lookup_user("0").expect("uid 0 exists"), by_name);
    }

    /// Unknown names and bad input are errors, not panics.
    #[test]
    fn unknown_names() {
        assert!(matches!(
            lookup_user("no-such-user-chain"),
            Err(Error::UnknownUser { .. })
        ));
        assert!(matches!(
            lookup_user("a\0b"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(lookup_user(""), Err(Error::InvalidName { .. })));
        assert!(matches!(
            lookup_group("no-such-group-chain"),
            Err(Error::UnknownGroup { .. })
        ));
        assert_eq!(group_id("no-such-group-chain"), None);
    }

    /// Groups resolve by name; numbers are taken as gids.
    #[test]
    fn groups() {
        assert_eq!(lookup_group("root").expect("root group exists"), 0);
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(lookup_group("4242").expect("numeric gid"), 4242);
        let me = std::process::id() as i32;
        // SAFETY: getegid has no arguments and cannot fail.
        let egid = unsafe { libc::getegid() };
        assert!(process_groups(me).contains(&egid));
    }

    /// A sampled tree has memory; a busy tree shows CPU; unknown roots are absent.
    #[tokio::test]
    async fn sampler_sums_trees() {
        use crate::driver::process::{ProcessDriver, ProcessSpec};
        use crate::testutil::{eventually, unique_tag, KillOnDrop, PATIENCE};

        let dir = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new().unwrap();
        let tag = unique_tag("sample");
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 1000 & while :; do :; done".into()],
            cwd: dir.path().to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            user: None,
            stdout: dir.path().join("out"),
            stderr: dir.path().join("err"),
            tag: tag.clone(),
        };
        let (id, _watch) = driver.start(&spec).unwrap();
        let _guard = KillOnDrop {
            driver,
            id,
            tag: tag.clone(),
        };
        assert!(
            eventually(
                PATIENCE,
                || crate::driver::process::ProcessDriver::find_tagged(&tag).len() >= 2
            )
            .await
        );
        let mut sampler = Sampler::new();
        let first = sampler.sample(&[id.pid, i32::MAX, -3]);
        assert_eq!(first.len(), 1, "{first:?}");
        let tree = first[&id.pid];
        let root_only = {
            let status = std::fs::read_to_string(format!("/proc/{}/status", id.pid)).unwrap();
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap();
            kb * 1024
        };
        assert!(tree.rss_bytes > root_only, "{tree:?} vs root {root_only}");
        // CPU use is a difference of tick counters (10 ms granularity), so sample at a
        // coarser pace than `eventually` polls, until the busy loop shows or time runs out.
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut busy = false;
        while !busy && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            busy = sampler
                .sample(&[id.pid])
                .get(&id.pid)
                .is_some_and(|s| s.cpu_percent > 20.0);
        }
        assert!(busy, "a busy loop shows CPU use");
    }

    /// At least one CPU is reported.
    #[test]
    fn cpus() {
        assert!(cpu_count() >= 1);
    }
}
