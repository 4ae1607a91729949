//! The files of a report folder: a run writes them into a staging folder inside it, and only a run that got
//! that far moves them over the old ones, one rename each, so a killed run never leaves a truncated
//! result.json. Netfault's own files are replaced; anything else a user put in the folder stays.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::error::{Error, Result};

/// What netfault writes into a report folder. A file of these that a run did not write again is removed when
/// its new files are published, so that no report mixes two runs.
pub const OWN_FILES: [&str; 9] = [
    "result.json",
    "killed.txt",
    "timeline.txt",
    "client.pcap",
    "server.pcap",
    "capture.pcapng",
    "report.html",
    "scenario.yaml",
    "environment.txt",
];

/// Where a run writes its files until they are published: a folder inside the report folder.
const STAGING: &str = ".netfault-partial";

/// The start of the name of the folder a publish sets the replaced files aside in ([`Replaced`]), followed by
/// the time of the publish in nanoseconds (a scenario process is pid 1 of its namespace: a pid names nothing).
const REPLACED: &str = ".netfault-replaced-";

/// Makes `dir` ready for a run and returns the staging folder to write into: `dir` exists, and the staging
/// folder is new and empty (a killed run's is removed, and so are replaced files a killed run left set aside).
pub fn stage(dir: &Path) -> Result<PathBuf> {
    let staging = dir.join(STAGING);
    remove_dir_if_present(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| Error::sys(format!("create report folder {}", staging.display()), e))?;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|name| name.starts_with(REPLACED)) {
                // Best effort: the process that set them aside may be removing them right now.
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(staging)
}

/// The staging folder of `dir` ([`stage`] makes it).
pub fn staging_of(dir: &Path) -> PathBuf {
    dir.join(STAGING)
}

/// Whether a run has staged files in `dir` and not published them (it is running, or was killed).
pub fn is_staged(dir: &Path) -> bool {
    dir.join(STAGING).is_dir()
}

/// Moves every file the run wrote from the staging folder into `dir` (`mv -f`) and removes netfault's own files
/// the run did not write (and the staging folder), all before it returns.
pub fn publish(dir: &Path) -> Result<()> {
    publish_setting_aside(dir)?.remove();
    Ok(())
}

/// [`publish`], but the old files it replaces, and netfault's own files the run did not write, are only set
/// aside, in a folder of their own inside `dir` ([`Replaced`]), all in one rename: the new report is complete
/// before any old file is unlinked (an unlink on this machine's ext4, mounted with `discard`, took 0.9 ms for a
/// report's eight old files written back, once 28 ms during a journal commit).
fn publish_setting_aside(dir: &Path) -> Result<Replaced> {
    let staging = dir.join(STAGING);
    let mut written = Vec::new();
    for entry in fs::read_dir(&staging).map_err(|e| Error::sys(format!("list {}", staging.display()), e))? {
        let name = entry.map_err(|e| Error::sys(format!("list {}", staging.display()), e))?.file_name();
        let (from, to) = (staging.join(&name), dir.join(&name));
        replace(&from, &to)
            .map_err(|e| Error::sys(format!("publish the report (mv {} {})", from.display(), to.display()), e))?;
        written.push(name);
    }
    for own in OWN_FILES {
        if written.iter().any(|name| name == own) {
            continue;
        }
        let old = dir.join(own);
        // A file goes with the replaced ones; anything else under that name (a folder of the user's) is refused
        // by the removal, as ever.
        let set_aside =
            fs::symlink_metadata(&old).is_ok_and(|old| old.is_file()) && fs::rename(&old, staging.join(own)).is_ok();
        if !set_aside {
            remove_file_if_present(&old)?;
        }
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    let aside = dir.join(format!("{REPLACED}{nanos}"));
    if fs::rename(&staging, &aside).is_ok() {
        return Ok(Replaced { folder: aside });
    }
    // A folder of that name (from a clock set back): removed here and now.
    fs::remove_dir_all(&staging).map_err(|e| Error::sys(format!("rm -r {}", staging.display()), e))?;
    Ok(Replaced { folder: PathBuf::new() })
}

/// The files a publish replaced, in a folder of their own inside the report folder (not a report: no report
/// file list or bundle looks there, and the next run of the scenario clears any left over).
#[must_use = "the replaced files stay on disk until removed"]
struct Replaced {
    folder: PathBuf,
}

impl Replaced {
    /// `rm -r` of the folder (best effort: what a failure leaves, the next run of the scenario clears).
    fn remove(self) {
        if !self.folder.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.folder);
        }
    }
}

/// `mv -f from to`, as a rename that replaces nothing: the new file and the old one change places in one step
/// (`renameat2(RENAME_EXCHANGE)`), which leaves the old one in the staging folder. A rename over an existing
/// file would make ext4 write the new file's data out there and then (`auto_da_alloc`, its guard for programs
/// that replace a file without fsync): the whole report, a few milliseconds of every rerun.
fn replace(from: &Path, to: &Path) -> io::Result<()> {
    // Only a file changes places: anything else there (a folder of the user's) makes the plain rename fail.
    if !fs::symlink_metadata(to).is_ok_and(|old| old.is_file()) {
        return fs::rename(from, to);
    }
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => Ok(()),
        // Gone meanwhile; or a file system without the exchange (EINVAL).
        Err(Errno::ENOENT | Errno::EINVAL) => fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}

/// Before `run --repeat` fills `dir/run-<i>/` again: removes netfault's own files from `dir`'s `run-*`
/// folders, and each such folder that is then empty (an earlier `--repeat` with more runs left it); leaves
/// everything else.
pub fn clear_runs(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::sys(format!("list {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::sys(format!("list {}", dir.display()), e))?;
        let is_run = entry.file_name().to_str().is_some_and(|name| name.starts_with("run-"));
        if !is_run || !entry.path().is_dir() {
            continue;
        }
        let run = entry.path();
        remove_dir_if_present(&run.join(STAGING))?;
        for own in OWN_FILES {
            remove_file_if_present(&run.join(own))?;
        }
        // Not empty: the user's files stay, and so does the folder.
        let _ = fs::remove_dir(&run);
    }
    Ok(())
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::sys(format!("remove the old report file (rm {})", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::sys(format!("remove a killed run's files (rm -r {})", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netfault-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A scratch report folder holding `files` (name, text), and its staging folder.
    fn report_with(name: &str, files: [(&str, &str); 3]) -> (PathBuf, PathBuf) {
        let dir = scratch(name);
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        let staging = stage(&dir).unwrap();
        (dir, staging)
    }

    /// The names in `dir`, in no particular order.
    fn names_in(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_rerun_replaces_netfaults_files_and_leaves_the_users() {
        let (dir, staging) =
            report_with("rerun", [("result.json", "old"), ("server.pcap", "old"), ("notes.txt", "mine")]);
        fs::write(staging.join("result.json"), "new").unwrap();
        fs::write(staging.join("client.pcap"), "new").unwrap();
        // Until it is published, the old report is whole.
        assert_eq!(fs::read_to_string(dir.join("result.json")).unwrap(), "old");
        publish(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("result.json")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dir.join("client.pcap")).unwrap(), "new");
        assert!(!dir.join("server.pcap").exists(), "an old own file this run did not write is gone");
        assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
        assert!(!staging.exists());
        let names = names_in(&dir);
        assert_eq!(names.len(), 3, "nothing set aside is left: {names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_replaced_files_are_set_aside_until_removed_and_a_killed_runs_are_cleared_by_the_next() {
        let (dir, staging) =
            report_with("aside", [("result.json", "old"), ("killed.txt", "old"), ("notes.txt", "mine")]);
        fs::write(staging.join("result.json"), "new").unwrap();
        let replaced = publish_setting_aside(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("result.json")).unwrap(), "new");
        assert!(!dir.join("killed.txt").exists(), "an old own file this run did not write is out of the report");
        assert!(!staging.exists());
        let aside = replaced.folder.clone();
        assert!(aside.starts_with(&dir) && aside.file_name().unwrap().to_string_lossy().starts_with(REPLACED));
        let mut old = names_in(&aside);
        old.sort();
        assert_eq!(old, ["killed.txt", "result.json"]);
        assert_eq!(fs::read_to_string(aside.join("result.json")).unwrap(), "old");
        replaced.remove();
        assert!(!aside.exists());
        // Set aside by a run killed before it removed them: the next run's staging clears them.
        let staging = stage(&dir).unwrap();
        fs::write(staging.join("result.json"), "newer").unwrap();
        let killed_aside = publish_setting_aside(&dir).unwrap().folder;
        assert!(killed_aside.is_dir(), "set aside and never removed, as by a run killed then");
        stage(&dir).unwrap();
        assert!(!killed_aside.exists(), "the next run cleared what a killed one set aside");
        assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_users_folder_under_an_own_files_name_is_never_moved_into_the_staging_folder() {
        let dir = scratch("folder");
        fs::create_dir_all(dir.join("report.html")).unwrap();
        fs::write(dir.join("report.html").join("mine.txt"), "mine").unwrap();
        let staging = stage(&dir).unwrap();
        fs::write(staging.join("report.html"), "new").unwrap();
        let error = publish(&dir).unwrap_err().to_string();
        assert!(error.contains("publish the report (mv"), "{error}");
        assert_eq!(fs::read_to_string(dir.join("report.html").join("mine.txt")).unwrap(), "mine");
        // The next run clears its staging folder: the user's folder is not in it.
        stage(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("report.html").join("mine.txt")).unwrap(), "mine");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_killed_runs_staging_is_cleared_by_the_next_run_and_never_published() {
        let dir = scratch("killed");
        fs::write(dir.join("result.json"), "complete").unwrap();
        let staging = stage(&dir).unwrap();
        fs::write(staging.join("result.json"), "trunc").unwrap();
        // Killed here: nothing is published. The next run starts from an empty staging folder.
        let staging = stage(&dir).unwrap();
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
        assert_eq!(fs::read_to_string(dir.join("result.json")).unwrap(), "complete");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clearing_runs_keeps_the_users_files_and_their_folders() {
        let dir = scratch("runs");
        for run in ["run-1", "run-2", "run-3"] {
            fs::create_dir_all(dir.join(run)).unwrap();
            fs::write(dir.join(run).join("result.json"), "old").unwrap();
        }
        fs::write(dir.join("run-2").join("notes.txt"), "mine").unwrap();
        fs::write(dir.join("result.json"), "single run").unwrap();
        clear_runs(&dir).unwrap();
        assert!(!dir.join("run-1").exists() && !dir.join("run-3").exists());
        assert_eq!(fs::read_to_string(dir.join("run-2").join("notes.txt")).unwrap(), "mine");
        assert!(!dir.join("run-2").join("result.json").exists());
        assert_eq!(fs::read_to_string(dir.join("result.json")).unwrap(), "single run", "not a run-* folder");
        fs::remove_dir_all(&dir).unwrap();
        clear_runs(&dir).unwrap();
    }
}
