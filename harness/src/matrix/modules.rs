//! A kernel's loadable modules for the VM: the networking ones (nf_tables and its expressions, veth, sock_diag,
//! qdiscs, ...) and the virtio block driver, uncompressed, each with what it depends on and the names the kernel
//! asks for it by (`modinfo -F depends`, `modinfo -F alias`), so that the guest's `/sbin/modprobe` can load
//! whatever the kernel requests (`request_module("nft-expr-objref")`), as on a real machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Context, Error, Result};

/// Module folders (under `kernel/`) the guest may need: everything netfault's engine, its faults and its
/// observers could ask the kernel for, and the virtio drivers the guest's disks need.
const SUBTREES: [&str; 6] =
    ["net/", "drivers/net/veth.", "drivers/virtio/", "drivers/block/virtio_blk.", "lib/", "crypto/"];

/// One module, uncompressed.
#[derive(Debug, Clone)]
pub struct Module {
    /// As the kernel names it (`-` read as `_`).
    pub name: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
    pub object: Vec<u8>,
}

/// The modules of `SUBTREES` in `tree` (`/lib/modules/<release>`), sorted by name.
pub fn collect(tree: &Path) -> Result<Vec<Module>> {
    let kernel = tree.join("kernel");
    let mut files = Vec::new();
    list_files(&kernel, &mut files).context(|| format!("read the module tree {}", kernel.display()))?;
    let mut modules = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&kernel).unwrap_or(&file).to_string_lossy().into_owned();
        if !SUBTREES.iter().any(|subtree| relative.starts_with(subtree)) {
            continue;
        }
        let Some((stem, compression)) = module_file(&file) else { continue };
        let object = read_module(&file, compression)?;
        let info = modinfo(&object).map_err(|e| Error::Internal(format!("{}: {e}", file.display())))?;
        let field = |key: &str| -> Vec<String> {
            info.iter().filter_map(|entry| entry.strip_prefix(key)).map(str::to_string).collect()
        };
        let depends = field("depends=")
            .iter()
            .flat_map(|list| list.split(','))
            .filter(|name| !name.is_empty())
            .map(kernel_name)
            .collect();
        modules.push(Module { name: kernel_name(&stem), depends, aliases: field("alias="), object });
    }
    if modules.is_empty() {
        return Err(Error::Missing {
            what: format!("kernel modules in {}", kernel.display()),
            hint: "the folder holds no networking modules (*.ko, *.ko.xz, *.ko.zst); unpack the kernel's package \
                   with its lib/modules tree"
                .into(),
        });
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(modules)
}

/// The modules built into the kernel image (`modules.builtin`: `kernel/net/netfilter/nft_objref.ko`), by
/// name: a request for one of them needs no loading.
pub fn builtin(tree: &Path) -> Result<Vec<String>> {
    let list = tree.join("modules.builtin");
    let text = std::fs::read_to_string(&list).context(|| format!("read {}", list.display()))?;
    let mut names: Vec<String> =
        text.lines().filter_map(|line| module_file(Path::new(line))).map(|(stem, _)| kernel_name(&stem)).collect();
    names.sort();
    Ok(names)
}

/// Whether a module of `modules` is called `name` or has it as an alias (written out, not a pattern).
pub fn provided(modules: &[Module], name: &str) -> bool {
    let wanted = kernel_name(name);
    modules.iter().any(|module| module.name == wanted || module.aliases.iter().any(|alias| alias == name))
}

/// `alias module` lines the guest's modprobe matches the kernel's requests against (shell patterns), the
/// module's own name first.
pub fn alias_table(modules: &[Module]) -> String {
    let mut table = String::new();
    for module in modules {
        table.push_str(&format!("{0} {0}\n", module.name));
        for alias in &module.aliases {
            if !alias.contains(char::is_whitespace) {
                table.push_str(&format!("{alias} {}\n", module.name));
            }
        }
    }
    table
}

fn list_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Xz,
    Zstd,
}

/// `veth.ko.xz` -> (`veth`, xz).
fn module_file(path: &Path) -> Option<(String, Compression)> {
    let name = path.file_name()?.to_str()?;
    [(".ko", Compression::None), (".ko.xz", Compression::Xz), (".ko.zst", Compression::Zstd)]
        .into_iter()
        .find_map(|(suffix, compression)| name.strip_suffix(suffix).map(|stem| (stem.to_string(), compression)))
}

fn kernel_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module's object file, decompressed by `xz -dc` / `zstd -dc` when the package ships it compressed.
fn read_module(path: &Path, compression: Compression) -> Result<Vec<u8>> {
    let program = match compression {
        Compression::None => return std::fs::read(path).context(|| format!("read {}", path.display())),
        Compression::Xz => "xz",
        Compression::Zstd => "zstd",
    };
    let output = Command::new(program).arg("-dc").arg(path).output().map_err(|e| Error::Missing {
        what: format!("the {program} program"),
        hint: format!("{e}; the kernel's modules are compressed: apt-get install {program}-utils"),
    })?;
    if !output.status.success() {
        return Err(Error::Internal(format!(
            "{program} -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// The `key=value` entries of an ELF64 module's `.modinfo` section (what `modinfo` prints).
pub fn modinfo(object: &[u8]) -> std::result::Result<Vec<String>, String> {
    let u16_at = |at: usize| object.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| object.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| object.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if object.get(..5) != Some(b"\x7fELF\x02") || object.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 object".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let sections = usize::try_from(u64_at(0x28).ok_or_else(truncated)?).map_err(|_| truncated())?;
    let entry_size = usize::from(u16_at(0x3a).ok_or_else(truncated)?);
    let count = usize::from(u16_at(0x3c).ok_or_else(truncated)?);
    let names_index = usize::from(u16_at(0x3e).ok_or_else(truncated)?);
    let header = |index: usize| -> Option<(u32, usize, usize)> {
        let at = sections.checked_add(index.checked_mul(entry_size)?)?;
        let name = u32_at(at)?;
        let offset = usize::try_from(u64_at(at + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(at + 0x20)?).ok()?;
        Some((name, offset, size))
    };
    let (_, names_offset, _) = header(names_index).ok_or("no section name table")?;
    for index in 0..count {
        let (name, offset, size) = header(index).ok_or("truncated section table")?;
        let name_at = names_offset.checked_add(name as usize).ok_or("bad section name")?;
        let name_bytes = object.get(name_at..).ok_or("bad section name")?;
        let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
        if name == b".modinfo" {
            let data = object.get(offset..offset.saturating_add(size)).ok_or("truncated .modinfo")?;
            return Ok(data
                .split(|b| *b == 0)
                .filter(|entry| !entry.is_empty())
                .map(|entry| String::from_utf8_lossy(entry).into_owned())
                .collect());
        }
    }
    Err("no .modinfo section".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a section name table and one `.modinfo` section.
    fn object_with_modinfo(entries: &[&str]) -> Vec<u8> {
        let mut names = b"\0.shstrtab\0.modinfo\0".to_vec();
        let mut info = Vec::new();
        for entry in entries {
            info.extend_from_slice(entry.as_bytes());
            info.push(0);
        }
        let mut object = vec![0u8; 64];
        object[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_at = object.len();
        object.append(&mut names);
        let info_at = object.len();
        object.extend_from_slice(&info);
        let sections_at = object.len();
        let section = |name: u32, offset: usize, size: usize| {
            let mut header = vec![0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            header
        };
        object.extend(section(0, 0, 0));
        object.extend(section(1, names_at, 20));
        object.extend(section(11, info_at, info.len()));
        object[0x28..0x30].copy_from_slice(&(sections_at as u64).to_le_bytes());
        object[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        object[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        object[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        object
    }

    #[test]
    fn modinfo_reads_the_entries_of_the_section() {
        let object = object_with_modinfo(&["alias=nft-expr-objref", "depends=nf_tables,nfnetlink", "name=nft_objref"]);
        assert_eq!(
            modinfo(&object).unwrap(),
            vec!["alias=nft-expr-objref", "depends=nf_tables,nfnetlink", "name=nft_objref"]
        );
        assert!(modinfo(b"not an object").unwrap_err().contains("not a little-endian ELF64"));
        assert!(modinfo(&object[..70]).is_err(), "a truncated object is refused, not read past its end");
    }

    #[test]
    fn the_alias_table_lists_each_module_by_its_name_and_its_aliases() {
        let module = |name: &str, aliases: &[&str]| Module {
            name: name.into(),
            depends: vec![],
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            object: vec![],
        };
        let modules = [module("nft_objref", &["nft-expr-objref"]), module("veth", &["rtnl-link-veth"])];
        assert!(provided(&modules, "rtnl-link-veth") && provided(&modules, "nft-objref") && provided(&modules, "veth"));
        assert!(!provided(&modules, "nft_reject_inet"));
        let table = alias_table(&modules);
        assert_eq!(table, "nft_objref nft_objref\nnft-expr-objref nft_objref\nveth veth\nrtnl-link-veth veth\n");
        assert_eq!(module_file(Path::new("a/veth.ko.xz")), Some(("veth".into(), Compression::Xz)));
        assert_eq!(module_file(Path::new("a/nf_tables.ko")), Some(("nf_tables".into(), Compression::None)));
        assert_eq!(module_file(Path::new("a/modules.order")), None);
        assert_eq!(kernel_name("nft-reject"), "nft_reject");
    }
}
