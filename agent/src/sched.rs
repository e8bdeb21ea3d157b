//! Scheduling priority (the nice value) of this process's threads: chaind's proxy workers run
//! at `worker_priority` from chaind.toml, as nginx's worker processes run at its
//! `worker_priority`.
//!
//! Two kernel facts shape this. On Linux every thread has a nice value of its own, so a worker
//! thread can be given one without touching the control plane's threads. And where the kernel
//! groups tasks by session ("autogroup": `kernel.sched_autogroup_enabled = 1`, for tasks in the
//! root CPU cgroup), a nice value weighs only against the threads of the same session; the
//! sessions share the CPUs by a nice value of their own, `/proc/self/autogroup`. Under systemd
//! with the CPU controller on, a service is in a cgroup of its own and `CPUWeight=` plays that
//! part instead.

#![allow(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

/// Sets the calling thread's nice value (-20..19; the kernel clamps others). Raising it is
/// always allowed; lowering it below the thread's current value needs CAP_SYS_NICE or a high
/// enough RLIMIT_NICE, and fails with `PermissionDenied` otherwise.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    let tid = gettid();
    // SAFETY: setpriority takes plain integers. With PRIO_PROCESS and a thread id it changes
    // that thread only (Linux keeps the nice value per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's id.
fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// What [`set_session_nice`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionNice {
    /// The session's nice value is set.
    Set,
    /// The kernel does not schedule by session (no autogroup, or it is off): thread nice values
    /// weigh against every other task already.
    NoAutogroup,
    /// This process does not lead its session: the session is someone else's (a shell and every
    /// command started from it), so it is left alone.
    NotSessionLeader,
}

/// Sets the nice value of this process's session where the kernel schedules by session (see the
/// module docs), so that a thread's own nice value counts against other processes too. Only when
/// this process leads its session, as a systemd service or a process started with `setsid` does:
/// chaind started from a shell does not renice the shell.
pub fn set_session_nice(nice: i32) -> io::Result<SessionNice> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if !enabled {
        return Ok(SessionNice::NoAutogroup);
    }
    // SAFETY: getsid(0) and getpid take no pointers and cannot fail for the calling process.
    let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
    if sid != pid {
        return Ok(SessionNice::NotSessionLeader);
    }
    // Without CAP_SYS_ADMIN the kernel takes one such write per 100 ms on the whole machine and
    // answers EAGAIN to the others: another process's write may just have used the turn.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::write("/proc/self/autogroup", nice.to_string()) {
            Ok(()) => return Ok(SessionNice::Set),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The nice value `/proc/self/autogroup` reports (`/autogroup-42 nice 0`), if any.
pub fn session_nice() -> Option<i32> {
    let text = std::fs::read_to_string("/proc/self/autogroup").ok()?;
    text.split_ascii_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn thread_nice(tid: i32) -> i32 {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        crate::procfs::parse_stat(&text).unwrap().nice
    }

    /// The nice value set by one thread is that thread's only.
    #[test]
    fn thread_nice_is_per_thread() {
        let main = gettid();
        let before = thread_nice(main);
        let target = (before + 3).min(19);
        let (set, seen) = std::thread::spawn(move || {
            set_thread_nice(target).unwrap();
            (target, thread_nice(gettid()))
        })
        .join()
        .unwrap();
        assert_eq!(seen, set, "the thread that set it");
        assert_eq!(thread_nice(main), before, "another thread of the process");
    }

    /// Run by `session_nice_in_own_session` in a child that leads a session of its own.
    #[test]
    fn session_nice_child() {
        if std::env::var_os("CHAIN_SCHED_CHILD").is_none() {
            return;
        }
        let before = session_nice();
        match set_session_nice(4).unwrap() {
            SessionNice::Set => assert_eq!(session_nice(), Some(4)),
            SessionNice::NoAutogroup => assert_eq!(session_nice(), before),
            SessionNice::NotSessionLeader => panic!("the child leads its session"),
        }
    }

    /// A session leader sets its session's nice value (where the kernel has autogroups); a
    /// process in someone else's session (this test's) leaves it alone.
    #[test]
    fn session_nice_in_own_session() {
        let before = session_nice();
        assert_ne!(
            set_session_nice(4).unwrap(),
            SessionNice::Set,
            "the test runner's session is not the test's to renice"
        );
        assert_eq!(session_nice(), before);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "sched::tests::session_nice_child", "--nocapture"])
            .env("CHAIN_SCHED_CHILD", "1");
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            child.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = child
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
        // The reaper of a process-driver test running alongside in this binary waits for every
        // child of the process, this one included, so its status may be gone (ECHILD); the
        // child's own test report says whether it passed.
        match child.wait() {
            Ok(status) => assert!(status.success(), "{text}"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECHILD), "{e}"),
        }
        assert!(text.contains("test result: ok. 1 passed"), "{text}");
    }
}
