//! The guest's whole root file system as an initramfs (`find . | cpio -o -H newc`): busybox, the netfault
//! binary and the programs scenarios `exec`, each with the shared libraries `ldd` lists, the kernel's
//! modules with a `/sbin/modprobe` that loads them on the kernel's request, the scenarios, and `/init`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Context, Error, Result};
use crate::matrix::modules::{self, Module};

/// What a file of the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    /// Contents and permission bits.
    File(Vec<u8>, u32),
    /// A copy of a host file, read when the image is written.
    HostFile(PathBuf, u32),
    Symlink(String),
}

/// The image being put together: absolute guest paths to entries, written in path order (parents first).
#[derive(Debug, Default)]
pub struct Image {
    entries: BTreeMap<String, Entry>,
}

impl Image {
    pub fn new() -> Image {
        let mut image = Image::default();
        for dir in
            ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/tmp", "/run", "/out", "/netfault"]
        {
            image.dir(dir);
        }
        image
    }

    /// `mkdir -p`.
    pub fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            self.entries.entry(at.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent_of(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// A file with the given contents and mode.
    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) {
        self.parent_of(path);
        self.entries.insert(path.to_string(), Entry::File(contents.into(), mode));
    }

    /// A copy of a host file at `path` (its mode kept).
    pub fn copy(&mut self, host: &Path, path: &str) -> Result<()> {
        let metadata = std::fs::metadata(host).context(|| format!("stat {}", host.display()))?;
        self.parent_of(path);
        self.entries
            .insert(path.to_string(), Entry::HostFile(host.to_path_buf(), metadata.permissions().mode() & 0o7777));
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent_of(path);
        self.entries.insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    /// A host program at `path` in the guest, with every shared library `ldd` lists at its own path.
    pub fn program(&mut self, host: &Path, path: &str) -> Result<()> {
        self.copy(host, path)?;
        for library in shared_libraries(host)? {
            let guest = library.to_string_lossy().into_owned();
            // The host path may be a symlink (/lib64/ld-linux-x86-64.so.2): the copy is of what it points to.
            self.copy(&library, &guest)?;
        }
        Ok(())
    }

    /// A host folder copied whole under `path` (`cp -r`), files in sorted order.
    pub fn tree(&mut self, host: &Path, path: &str) -> Result<()> {
        self.dir(path);
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .context(|| format!("read {}", host.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .context(|| format!("read {}", host.display()))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let guest = format!("{path}/{name}");
            if entry.path().is_dir() {
                self.tree(&entry.path(), &guest)?;
            } else {
                self.copy(&entry.path(), &guest)?;
            }
        }
        Ok(())
    }

    /// The kernel's modules in `/modules/<name>.ko`, `/modules/aliases` (pattern, module),
    /// `/modules/depends` (module, the modules it needs) and `/modules/builtin` (those built into the kernel),
    /// read by the guest's `/sbin/modprobe`.
    pub fn modules(&mut self, modules: Vec<Module>, builtin: &[String]) {
        self.file("/modules/builtin", builtin.iter().map(|name| format!("{name}\n")).collect::<String>(), 0o644);
        self.file("/modules/aliases", modules::alias_table(&modules), 0o644);
        let depends: String =
            modules.iter().map(|module| format!("{} {}\n", module.name, module.depends.join(" "))).collect();
        self.file("/modules/depends", depends, 0o644);
        for module in modules {
            self.file(&format!("/modules/{}.ko", module.name), module.object, 0o644);
        }
    }

    /// Writes the image as a newc cpio archive (what the kernel unpacks into its initial root).
    pub fn write(&self, path: &Path) -> Result<u64> {
        let file = File::create(path).context(|| format!("create {}", path.display()))?;
        let mut out = CpioWriter { out: BufWriter::new(file), written: 0, inode: 1 };
        let fail = |e| Error::sys(format!("write the initramfs {}", path.display()), e);
        for (name, entry) in &self.entries {
            let relative = name.trim_start_matches('/');
            match entry {
                Entry::Dir => out.entry(relative, 0o040_755, &[]).map_err(fail)?,
                Entry::File(contents, mode) => out.entry(relative, 0o100_000 | mode, contents).map_err(fail)?,
                Entry::HostFile(host, mode) => {
                    let contents = std::fs::read(host).context(|| format!("read {}", host.display()))?;
                    out.entry(relative, 0o100_000 | mode, &contents).map_err(fail)?;
                }
                Entry::Symlink(target) => out.entry(relative, 0o120_777, target.as_bytes()).map_err(fail)?,
            }
        }
        out.entry("TRAILER!!!", 0, &[]).map_err(fail)?;
        out.out.flush().map_err(fail)?;
        Ok(out.written)
    }
}

/// The shared libraries a dynamically linked program loads (`ldd PROGRAM`), the loader included; none for a
/// static one.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(program).output().map_err(|e| Error::Missing {
        what: "ldd".into(),
        hint: format!("{e}; it lists the libraries to copy into the VM (apt-get install libc-bin)"),
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // "not a dynamic executable": static programs need nothing.
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(Error::Missing {
                what: format!("a shared library of {}", program.display()),
                hint: format!("ldd says: {}", line.trim()),
            });
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or(line).split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// `cpio -o -H newc` one entry at a time.
struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    inode: u32,
}

impl<W: Write> CpioWriter<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let name_size = name.len() + 1;
        let data_size = u32::try_from(data.len()).map_err(|_| std::io::Error::other(format!("{name}: over 4 GiB")))?;
        let links = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [self.inode, mode, 0, 0, links, 0, data_size, 0, 0, 0, 0, name_size as u32, 0];
        self.inode += 1;
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..padding as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_newc_with_parents_before_children_and_a_trailer() {
        let mut image = Image::default();
        image.file("/a/b/init", b"#!/bin/sh\n".to_vec(), 0o755);
        image.symlink("/a/sh", "busybox");
        let path = std::env::temp_dir().join(format!("netfault-cpio-{}", std::process::id()));
        let size = image.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<&str> = ["a\0", "a/b\0", "a/b/init\0", "a/sh\0", "TRAILER!!!\0"]
            .into_iter()
            .filter(|name| text.contains(name))
            .collect();
        assert_eq!(names.len(), 5, "{text}");
        assert!(text.find("a/b\0").unwrap() < text.find("a/b/init\0").unwrap());
        // The first header: magic, inode 1, a directory 0755.
        assert!(text.starts_with("07070100000001000041ed"), "{}", &text[..30]);
        // init: mode 0100755 and its 10 bytes.
        let init = text.find("a/b/init\0").unwrap();
        let header = &text[init - 110..init];
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "0000000a");
    }

    #[test]
    fn ldd_lists_the_loader_and_libc_of_a_dynamic_program() {
        let libraries = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(libraries.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libraries:?}");
        assert!(libraries.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "{libraries:?}");
    }
}
