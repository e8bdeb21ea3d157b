//! The store: chain's crash-safe memory, kept in sled under `DIR/state`.
//!
//! It owns every sled tree, the record types written into them and their encoding (JSON with a
//! `v` schema field). It is the only module that knows sled: swapping the engine touches nothing
//! else. It makes no decisions: the supervisor is its only writer, the API reads through the
//! supervisor or through the read-only accessors here.
//!
//! Trees:
//! - `units`: unit name → [`UnitRecord`] (last good spec, deployment number, user-stopped flag).
//! - `revisions`: `unit/revision` → [`RevisionRecord`] (every resolved spec a unit has had).
//! - `instances`: `unit/index/generation` → [`InstanceRecord`] (pid + start time, tag, port, FIFOs).
//! - `events`: big-endian sequence number → [`EventRecord`], trimmed to the newest `EVENT_CAP`.
//! - `meta`: store id, generation counter, active profile.
//! - `deploys`: `unit/deployment` → [`DeployRecord`] (`chainctl history`).

mod records;

use std::path::Path;

pub use records::*;

/// How many events the store keeps (oldest trimmed first).
pub const EVENT_CAP: u64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record {key} in tree {tree}: {source}")]
    Decode {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Handle to the sled database. Cloning is cheap (sled trees are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    units: sled::Tree,
    revisions: sled::Tree,
    instances: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    deploys: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(4 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| Error::Open {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Store {
            units: db.open_tree("units")?,
            revisions: db.open_tree("revisions")?,
            instances: db.open_tree("instances")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            deploys: db.open_tree("deploys")?,
            db,
        })
    }

    /// Makes every write so far durable. Called by the supervisor at the end of each turn that
    /// wrote something, so a `kill -9` loses nothing that was acted on.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// A random id created with the store: it makes instance tags unique across chaind roots on
    /// one host (tests run many daemons side by side).
    pub fn store_id(&self) -> Result<String> {
        if let Some(v) = self.meta.get("store_id")? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let id = format!("{:016x}", random_u64());
        self.meta.insert("store_id", id.as_bytes())?;
        Ok(id)
    }

    /// The highest generation handed out so far (0 before the first).
    pub fn current_generation(&self) -> Result<u64> {
        Ok(self
            .meta
            .get("generation")?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Next instance generation (monotonic for the store's lifetime).
    pub fn next_generation(&self) -> Result<u64> {
        let next = self
            .meta
            .update_and_fetch("generation", |old| {
                let n = old.map(be_u64).unwrap_or(0) + 1;
                Some(n.to_be_bytes().to_vec())
            })?
            .map(|v| be_u64(&v))
            .unwrap_or(1);
        Ok(next)
    }

    pub fn profile(&self) -> Result<Option<String>> {
        Ok(self
            .meta
            .get("profile")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_profile(&self, profile: Option<&str>) -> Result<()> {
        match profile {
            Some(p) => self.meta.insert("profile", p.as_bytes())?,
            None => self.meta.remove("profile")?,
        };
        Ok(())
    }

    // --- units -------------------------------------------------------------------------------

    pub fn units(&self) -> Result<Vec<UnitRecord>> {
        decode_all(&self.units, "units")
    }

    pub fn put_unit(&self, rec: &UnitRecord) -> Result<()> {
        self.units.insert(rec.name.as_bytes(), encode(rec))?;
        Ok(())
    }

    pub fn remove_unit(&self, name: &str) -> Result<()> {
        self.units.remove(name.as_bytes())?;
        Ok(())
    }

    // --- revisions ---------------------------------------------------------------------------

    /// Records a revision the first time it is seen (later calls keep the first timestamp).
    pub fn put_revision(&self, rec: &RevisionRecord) -> Result<()> {
        let key = format!("{}/{}", rec.unit, rec.revision);
        if !self.revisions.contains_key(key.as_bytes())? {
            self.revisions.insert(key.as_bytes(), encode(rec))?;
        }
        Ok(())
    }

    pub fn revisions(&self, unit: &str) -> Result<Vec<RevisionRecord>> {
        let mut out: Vec<RevisionRecord> = Vec::new();
        for item in self.revisions.scan_prefix(format!("{unit}/").as_bytes()) {
            let (k, v) = item?;
            out.push(decode(&v, "revisions", &k)?);
        }
        out.sort_by_key(|r| r.first_seen_ms);
        Ok(out)
    }

    // --- instances ---------------------------------------------------------------------------

    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        decode_all(&self.instances, "instances")
    }

    pub fn put_instance(&self, rec: &InstanceRecord) -> Result<()> {
        self.instances.insert(rec.key().as_bytes(), encode(rec))?;
        Ok(())
    }

    pub fn remove_instance(&self, unit: &str, index: u32, generation: u64) -> Result<()> {
        self.instances
            .remove(InstanceRecord::key_of(unit, index, generation).as_bytes())?;
        Ok(())
    }

    // --- deploys -----------------------------------------------------------------------------

    /// Inserts or updates a deploy record (keyed by unit and deployment number).
    pub fn put_deploy(&self, rec: &DeployRecord) -> Result<()> {
        let key = format!("{}/{:020}", rec.unit, rec.deployment);
        self.deploys.insert(key.as_bytes(), encode(rec))?;
        Ok(())
    }

    /// The newest `n` deploys of a unit, oldest first.
    pub fn deploys(&self, unit: &str, n: usize) -> Result<Vec<DeployRecord>> {
        let mut out = Vec::new();
        for item in self
            .deploys
            .scan_prefix(format!("{unit}/").as_bytes())
            .rev()
        {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            out.push(decode(&v, "deploys", &k)?);
        }
        out.reverse();
        Ok(out)
    }

    /// A stored revision's spec.
    pub fn revision(&self, unit: &str, revision: &str) -> Result<Option<RevisionRecord>> {
        match self
            .revisions
            .get(format!("{unit}/{revision}").as_bytes())?
        {
            Some(v) => Ok(Some(decode(&v, "revisions", revision.as_bytes())?)),
            None => Ok(None),
        }
    }

    // --- events ------------------------------------------------------------------------------

    /// Appends an event, assigning its sequence number, and trims the oldest beyond EVENT_CAP.
    pub fn append_event(&self, ev: &mut EventRecord) -> Result<()> {
        let seq = match self.events.last()? {
            Some((k, _)) => be_u64(&k) + 1,
            None => 1,
        };
        ev.seq = seq;
        self.events.insert(seq.to_be_bytes(), encode(ev))?;
        if seq > EVENT_CAP && seq % 256 == 0 {
            let cutoff = (seq - EVENT_CAP).to_be_bytes();
            for item in self.events.range(..cutoff) {
                let (k, _) = item?;
                self.events.remove(k)?;
            }
        }
        Ok(())
    }

    /// The newest `n` events (oldest first), optionally of one unit only.
    pub fn recent_events(&self, n: usize, unit: Option<&str>) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        for item in self.events.iter().rev() {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            let ev: EventRecord = decode(&v, "events", &k)?;
            if unit.is_none_or(|u| ev.unit == u) {
                out.push(ev);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Events with a sequence number greater than `after` (oldest first).
    pub fn events_after(&self, after: u64) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        for item in self.events.range((after + 1).to_be_bytes()..) {
            let (k, v) = item?;
            out.push(decode(&v, "events", &k)?);
        }
        Ok(out)
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize: plain data, string map keys")
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8], tree: &'static str, key: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Decode {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn decode_all<T: serde::de::DeserializeOwned>(
    t: &sled::Tree,
    name: &'static str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in t.iter() {
        let (k, v) = item?;
        match decode(&v, name, &k) {
            Ok(r) => out.push(r),
            // A record we cannot read (written by a newer chaind, or damaged) must not stop the
            // daemon: skip it loudly.
            Err(e) => tracing::error!(error = %e, "skipping unreadable store record"),
        }
    }
    Ok(out)
}

/// A non-cryptographic random number from the OS (store ids, jitter seeds).
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(unit: &str, msg: &str) -> EventRecord {
        EventRecord {
            v: 1,
            seq: 0,
            ts_ms: 1,
            unit: unit.into(),
            instance: None,
            kind: "test".into(),
            message: msg.into(),
        }
    }

    /// Opens the store at `dir` again after a handle to it was dropped. sled releases its file
    /// lock from a background thread shortly after the last handle goes, so an open at once
    /// can still find the lock held; it is retried until it succeeds (5 s at most).
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("store still locked after 5 s: {e}"),
            }
        }
    }

    /// Events get increasing sequence numbers and survive reopening the store.
    #[test]
    fn events_are_sequenced_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 0..5 {
                s.append_event(&mut ev(if i % 2 == 0 { "a" } else { "b" }, &i.to_string()))
                    .unwrap();
            }
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        let all = s.recent_events(10, None).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let a = s.recent_events(2, Some("a")).unwrap();
        assert_eq!(
            a.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            vec!["2", "4"]
        );
        assert_eq!(s.events_after(3).unwrap().len(), 2);
    }

    /// Generations never repeat, across reopen too; the store id is stable.
    #[test]
    fn generations_are_monotonic() {
        let dir = tempfile::tempdir().unwrap();
        let (g1, id1) = {
            let s = Store::open(dir.path()).unwrap();
            s.next_generation().unwrap();
            let g = s.next_generation().unwrap();
            s.flush().unwrap();
            (g, s.store_id().unwrap())
        };
        let s = reopen(dir.path());
        assert!(s.next_generation().unwrap() > g1);
        assert_eq!(s.store_id().unwrap(), id1);
    }
}

#[cfg(test)]
mod roundtrip {
    use super::*;

    /// Every record type decodes what it encodes, with a realistic spec inside.
    #[test]
    fn unit_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let text = "instances = 2\n[process]\ncommand = \"x\"\n[health]\ntype = \"http\"\n[[route]]\npath = \"/\"\n[deploy]\nstrategy = \"blue-green\"\n";
        let file = crate::unit::parse(std::path::Path::new("/u/web.toml"), text).unwrap();
        let spec = crate::unit::resolve(
            &file,
            &crate::unit::ResolveCtx {
                cpus: 2,
                ..Default::default()
            },
            &Default::default(),
        )
        .unwrap();
        let rec = UnitRecord {
            v: 1,
            name: "web".into(),
            path: "/u/web.toml".into(),
            revision: "abc".into(),
            spec,
            deployment: 3,
            stopped: false,
            last_deployment: 4,
            stable: Some((2, "def".into())),
            deploy: None,
            kept: Some((2, "def".into(), 99)),
            failed_revision: None,
            overrides: vec![("env.A".into(), "1".into())],
            immediate: false,
        };
        let s = Store::open(dir.path()).unwrap();
        s.put_unit(&rec).unwrap();
        let back: Result<UnitRecord> = decode(&encode(&rec), "units", b"web");
        assert_eq!(back.unwrap(), rec);
    }
}
