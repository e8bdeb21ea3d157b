//! File watching with debounce and ignore globs, over `notify` (inotify on Linux).
//!
//! Used for the units directory (hot reload) and for units with `[watch]`. The callback runs on
//! a tokio task once changes have been quiet for the debounce period, with the first path that
//! changed. It owns no state beyond its watcher; dropping the [`DirWatch`] stops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Always ignored below watched paths: VCS metadata and dependency trees churn constantly.
/// Matched as path components, not globs, so that a watch without ignore patterns (the units
/// directory's) never compiles a glob set.
const ALWAYS_IGNORED: [&str; 2] = [".git", "node_modules"];

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub paths: Vec<PathBuf>,
    pub recursive: bool,
    /// Globs matched against the path relative to the watched root, and against the file name.
    pub ignore: Vec<String>,
    pub debounce: Duration,
}

pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::AbortHandle,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DirWatch {
    /// Must be called inside a tokio runtime.
    pub fn start<F>(opts: WatchOptions, on_change: F) -> Result<DirWatch, String>
    where
        F: Fn(PathBuf) + Send + 'static,
    {
        let ignore = build_ignore(&opts.ignore)?;
        let roots = opts.paths.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            for path in ev.paths {
                if !is_ignored(&ignore, &roots, &path) {
                    let _ = tx.send(path);
                }
            }
        })
        .map_err(|e| e.to_string())?;
        let mode = if opts.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        for p in &opts.paths {
            watcher
                .watch(p, mode)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let debounce = opts.debounce;
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait until the burst is over.
                loop {
                    match tokio::time::timeout(debounce, rx.recv()).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                on_change(first);
            }
        });
        Ok(DirWatch {
            _watcher: watcher,
            task: task.abort_handle(),
        })
    }
}

/// The user's ignore globs as one set; `None` when there are none.
fn build_ignore(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("ignore pattern {p:?}: {e}"))?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

fn is_ignored(set: &Option<GlobSet>, roots: &[PathBuf], path: &Path) -> bool {
    if path
        .components()
        .any(|c| ALWAYS_IGNORED.iter().any(|i| c.as_os_str() == *i))
    {
        return true;
    }
    let Some(set) = set else { return false };
    if path.file_name().is_some_and(|n| set.is_match(n)) || set.is_match(path) {
        return true;
    }
    roots
        .iter()
        .any(|r| path.strip_prefix(r).is_ok_and(|rel| set.is_match(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ignore globs match by file name, by relative path, and the built-in VCS/deps ignores.
    #[test]
    fn ignore_rules() {
        let set = build_ignore(&["*.log".into(), "tmp/**".into()]).unwrap();
        let roots = vec![PathBuf::from("/app")];
        assert!(is_ignored(&set, &roots, Path::new("/app/server.log")));
        assert!(is_ignored(&set, &roots, Path::new("/app/tmp/a/b.txt")));
        assert!(is_ignored(&set, &roots, Path::new("/app/.git/index")));
        assert!(is_ignored(
            &set,
            &roots,
            Path::new("/app/node_modules/x/index.js")
        ));
        assert!(!is_ignored(&set, &roots, Path::new("/app/src/main.js")));
        assert!(build_ignore(&["[".into()]).is_err());
        // Without patterns: no glob set, and the built-in ignores still apply.
        let none = build_ignore(&[]).unwrap();
        assert!(none.is_none());
        assert!(is_ignored(&none, &roots, Path::new("/app/.git/index")));
        assert!(is_ignored(
            &none,
            &roots,
            Path::new("/app/node_modules/x.js")
        ));
        assert!(!is_ignored(&none, &roots, Path::new("/app/src/.gitignore")));
    }

    /// A burst of writes fires once, after the debounce.
    #[tokio::test]
    async fn debounced_change_fires_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _w = DirWatch::start(
            WatchOptions {
                paths: vec![dir.path().to_path_buf()],
                recursive: true,
                ignore: vec![],
                debounce: Duration::from_millis(100),
            },
            move |p| {
                let _ = tx.send(p);
            },
        )
        .unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert!(got.is_some());
        // Nothing else arrives for a while after the burst.
        assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_err());
    }
}
