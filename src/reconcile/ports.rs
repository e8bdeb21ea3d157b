//! Port pool: hands each instance a port that is free on this host.
//!
//! Owned by the supervisor (single writer). A port stays taken while any instance holding it
//! exists, including one that is draining or stopping, and a re-adopted instance keeps its
//! recorded port. Before handing out a port the pool checks that nothing else on the host has
//! bound it. The scan starts at a random offset so that daemons sharing a host rarely collide.

use std::collections::BTreeSet;
use std::net::TcpListener;

use crate::unit::PortSpec;

#[derive(Debug)]
pub struct PortPool {
    start: u16,
    end: u16,
    cursor: u16,
    used: BTreeSet<u16>,
}

impl PortPool {
    pub fn new(start: u16, end: u16, seed: u64) -> PortPool {
        let (start, end) = if start <= end {
            (start, end)
        } else {
            (end, start)
        };
        let span = u64::from(end - start) + 1;
        PortPool {
            start,
            end,
            cursor: start + (seed % span) as u16,
            used: BTreeSet::new(),
        }
    }

    pub fn range(&self) -> (u16, u16) {
        (self.start, self.end)
    }

    /// Marks a port as taken (re-adopted instances).
    pub fn reserve(&mut self, port: u16) {
        self.used.insert(port);
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// A port for instance `index` of a unit with this port spec; `Ok(None)` for `port = "none"`.
    pub fn allocate(&mut self, spec: &PortSpec, index: u32) -> Result<Option<u16>, String> {
        match *spec {
            PortSpec::None => Ok(None),
            PortSpec::Auto => self.next_auto().map(Some),
            PortSpec::Range { start, end } => self.scan(start, end, start).map(Some),
            PortSpec::Fixed { base } => {
                let port = u32::from(base) + index;
                let port = u16::try_from(port)
                    .map_err(|_| format!("port {base} + instance {index} is beyond 65535"))?;
                if self.used.contains(&port) {
                    return Err(format!("port {port} is still held by another instance"));
                }
                if !bindable(port) {
                    return Err(format!(
                        "port {port} is in use by another process on this host"
                    ));
                }
                self.used.insert(port);
                Ok(Some(port))
            }
        }
    }

    /// Checks an instance's port before it is spawned again, so that it does not crash-loop on
    /// a port another process took while it was down, and that process cannot answer its
    /// readiness check. A port from the pool or a range is swapped for a free one
    /// (`Ok(Some(new))`); a fixed port cannot move, and is an error while it is taken.
    pub fn recheck(&mut self, spec: &PortSpec, port: u16) -> Result<Option<u16>, String> {
        if matches!(spec, PortSpec::None) || bindable(port) {
            return Ok(None);
        }
        if matches!(spec, PortSpec::Fixed { .. }) {
            return Err(format!(
                "port {port} is in use by another process on this host"
            ));
        }
        // The old port stays marked used while scanning, so it cannot be picked again.
        let new = match *spec {
            PortSpec::Range { start, end } => self.scan(start, end, start),
            _ => self.next_auto(),
        }
        .map_err(|e| format!("port {port} is taken by another process; {e}"))?;
        self.used.remove(&port);
        Ok(Some(new))
    }

    fn next_auto(&mut self) -> Result<u16, String> {
        let (start, end, cursor) = (self.start, self.end, self.cursor);
        let port = self.scan(start, end, cursor)?;
        self.cursor = if port >= end { start } else { port + 1 };
        Ok(port)
    }

    fn scan(&mut self, start: u16, end: u16, from: u16) -> Result<u16, String> {
        let from = from.clamp(start, end);
        let candidates = (from..=end).chain(start..from);
        for port in candidates {
            if port != 0 && !self.used.contains(&port) && bindable(port) {
                self.used.insert(port);
                return Ok(port);
            }
        }
        Err(format!("no free port in {start}-{end}"))
    }
}

/// True when nothing on the host listens on the port (any address).
fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auto ports are unique until released; a port bound by someone else is skipped.
    #[test]
    fn allocates_unique_free_ports() {
        let busy = TcpListener::bind("0.0.0.0:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let mut pool = PortPool::new(busy_port, busy_port.saturating_add(3), 0);
        let a = pool.allocate(&PortSpec::Auto, 0).unwrap().unwrap();
        let b = pool.allocate(&PortSpec::Auto, 1).unwrap().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, busy_port);
        assert_ne!(b, busy_port);
        pool.release(a);
        assert!(pool.allocate(&PortSpec::Auto, 2).is_ok());
        assert_eq!(pool.allocate(&PortSpec::None, 0).unwrap(), None);
    }

    /// A port taken by another process is swapped on recheck (auto and range) and an error when
    /// fixed; a free port stays.
    #[test]
    fn recheck_moves_off_a_taken_port() {
        let squat = TcpListener::bind("0.0.0.0:0").unwrap();
        let taken = squat.local_addr().unwrap().port();
        let mut pool = PortPool::new(taken, taken.saturating_add(50), 0);
        pool.reserve(taken);
        let moved = pool.recheck(&PortSpec::Auto, taken).unwrap().unwrap();
        assert_ne!(moved, taken);
        assert!(pool.used.contains(&moved) && !pool.used.contains(&taken));
        // Still free: stays.
        assert_eq!(pool.recheck(&PortSpec::Auto, moved).unwrap(), None);
        let (start, end) = (taken, taken.saturating_add(50));
        pool.reserve(taken);
        let in_range = pool
            .recheck(&PortSpec::Range { start, end }, taken)
            .unwrap()
            .unwrap();
        assert!((start..=end).contains(&in_range) && in_range != taken && in_range != moved);
        assert!(pool
            .recheck(&PortSpec::Fixed { base: taken }, taken)
            .is_err());
        let fixed_free = PortSpec::Fixed { base: moved };
        assert_eq!(pool.recheck(&fixed_free, moved).unwrap(), None);
        // Nothing free in a one-port range: an error, the port kept.
        pool.reserve(taken);
        let one = PortSpec::Range {
            start: taken,
            end: taken,
        };
        assert!(pool.recheck(&one, taken).is_err());
        assert!(pool.used.contains(&taken));
    }

    /// Fixed ports are base + index and refuse a port still held.
    #[test]
    fn fixed_ports() {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        let mut pool = PortPool::new(20000, 20010, 0);
        assert_eq!(
            pool.allocate(&PortSpec::Fixed { base }, 0).unwrap(),
            Some(base)
        );
        assert!(pool.allocate(&PortSpec::Fixed { base }, 0).is_err());
    }
}
