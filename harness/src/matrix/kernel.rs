//! Which kernels a matrix boots: Debian's cloud kernels unpacked into a cache by `ci/kernels.sh`, found by a
//! version prefix (`6.1`, `6.12`), or any vmlinuz given by path with its modules beside it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where `ci/kernels.sh` unpacks kernels (`<cache>/<release>/boot/vmlinuz-<release>` and
/// `<cache>/<release>/lib/modules/<release>/`); `NETFAULT_KERNELS` moves it.
pub const DEFAULT_CACHE: &str = "/var/cache/netfault/kernels";

/// The environment variable that overrides [`DEFAULT_CACHE`].
pub const CACHE_ENV: &str = "NETFAULT_KERNELS";

/// A kernel to boot: its image and the module tree it loads from (`/lib/modules/<release>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
    pub image: PathBuf,
    pub modules: PathBuf,
}

/// The kernel cache folder: `$NETFAULT_KERNELS`, else [`DEFAULT_CACHE`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// `--kernel VERSION|PATH`: an existing file is a vmlinuz; anything else a release prefix looked up in `cache`.
pub fn resolve(spec: &str, cache: &Path) -> Result<Kernel> {
    let path = Path::new(spec);
    if path.is_file() {
        return from_image(path);
    }
    if spec.contains('/') {
        return Err(Error::Missing {
            what: format!("kernel image {spec}"),
            hint: "no such file; give a vmlinuz path or a Debian kernel version such as 6.1 or 6.12".into(),
        });
    }
    let releases = cached_releases(cache);
    let best = releases.iter().filter(|release| matches_prefix(release, spec)).max_by(|a, b| version_order(a, b));
    match best {
        Some(release) => Ok(Kernel {
            release: release.clone(),
            image: cache.join(release).join("boot").join(format!("vmlinuz-{release}")),
            modules: cache.join(release).join("lib/modules").join(release),
        }),
        None => Err(Error::Missing {
            what: format!("kernel {spec} in {}", cache.display()),
            hint: format!(
                "{}; fetch it with `bash ci/kernels.sh {spec}` (apt-get download linux-image-{spec}.*-cloud-amd64 \
                 and dpkg-deb -x into {}; nothing is installed into /boot), or give a vmlinuz path",
                match releases.is_empty() {
                    true => "the cache holds no kernel".to_string(),
                    false => format!("the cache holds {}", releases.join(", ")),
                },
                cache.display()
            ),
        }),
    }
}

/// A kernel given by its image: `vmlinuz-<release>` (Debian's name) or `bzImage`, with its modules in
/// `<image's folder>/../lib/modules/<release>` (an unpacked package) or `/lib/modules/<release>`.
fn from_image(image: &Path) -> Result<Kernel> {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let release = name.strip_prefix("vmlinuz-").map(str::to_string).ok_or_else(|| Error::Missing {
        what: format!("the release of kernel image {}", image.display()),
        hint: "name it vmlinuz-<release> (as `uname -r` prints it), the name Debian gives it, so that its modules \
               can be found in lib/modules/<release>"
            .into(),
    })?;
    let beside = image.parent().and_then(Path::parent).map(|root| root.join("lib/modules").join(&release));
    let modules = beside.filter(|dir| dir.is_dir()).unwrap_or_else(|| Path::new("/lib/modules").join(&release));
    if !modules.is_dir() {
        return Err(Error::Missing {
            what: format!("the modules of kernel {release}"),
            hint: format!("neither lib/modules/{release} beside {} nor {} exists", image.display(), modules.display()),
        });
    }
    Ok(Kernel { release, image: image.to_path_buf(), modules })
}

/// Releases unpacked in the cache (folders holding their vmlinuz), sorted.
pub fn cached_releases(cache: &Path) -> Vec<String> {
    let mut releases: Vec<String> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let release = entry.file_name().to_string_lossy().into_owned();
            entry.path().join("boot").join(format!("vmlinuz-{release}")).is_file().then_some(release)
        })
        .collect();
    releases.sort_by(|a, b| version_order(a, b));
    releases
}

/// `6.1` matches `6.1.0-57-cloud-amd64` and `6.1.158`, not `6.12.118+deb12-cloud-amd64`.
fn matches_prefix(release: &str, prefix: &str) -> bool {
    release.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Compares releases by their numbers (`6.1.0-57` < `6.1.0-100`), text between them as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(release: &str) -> Vec<(u64, String)> {
        let mut parts = Vec::new();
        let mut rest = release;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let number = rest[..digits].parse().unwrap_or(0);
            rest = &rest[digits..];
            let text_len = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            parts.push((number, rest[..text_len].to_string()));
            rest = &rest[text_len..];
        }
        parts
    }
    parts(a).cmp(&parts(b))
}

/// The kernel this process runs on (`uname -r`).
pub fn host_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(releases: &[&str]) -> tempdir::Dir {
        let dir = tempdir::Dir::new("kernels");
        for release in releases {
            let boot = dir.path().join(release).join("boot");
            std::fs::create_dir_all(&boot).unwrap();
            std::fs::write(boot.join(format!("vmlinuz-{release}")), b"").unwrap();
            std::fs::create_dir_all(dir.path().join(release).join("lib/modules").join(release)).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(what: &str) -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "netfault-{what}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_version_prefix_picks_the_newest_release_of_that_line_only() {
        let cache = cache_with(&["6.1.0-9-cloud-amd64", "6.1.0-57-cloud-amd64", "6.12.118+deb12-cloud-amd64"]);
        assert_eq!(resolve("6.1", cache.path()).unwrap().release, "6.1.0-57-cloud-amd64");
        let kernel = resolve("6.12", cache.path()).unwrap();
        assert_eq!(kernel.release, "6.12.118+deb12-cloud-amd64");
        assert!(kernel.image.ends_with("6.12.118+deb12-cloud-amd64/boot/vmlinuz-6.12.118+deb12-cloud-amd64"));
        assert!(kernel.modules.ends_with("lib/modules/6.12.118+deb12-cloud-amd64"));
    }

    #[test]
    fn a_missing_kernel_says_what_the_cache_holds_and_how_to_fetch_it() {
        let cache = cache_with(&["6.1.0-57-cloud-amd64"]);
        let message = resolve("6.8", cache.path()).unwrap_err().to_string();
        assert!(message.contains("missing kernel 6.8 in"), "{message}");
        assert!(message.contains("the cache holds 6.1.0-57-cloud-amd64"), "{message}");
        assert!(message.contains("bash ci/kernels.sh 6.8"), "{message}");
        let empty = cache_with(&[]);
        assert!(resolve("6.1", empty.path()).unwrap_err().to_string().contains("the cache holds no kernel"));
        assert!(resolve("/no/such/vmlinuz", empty.path()).unwrap_err().to_string().contains("no such file"));
    }

    #[test]
    fn an_image_path_finds_its_modules_beside_it() {
        let cache = cache_with(&["6.1.0-57-cloud-amd64"]);
        let image = cache.path().join("6.1.0-57-cloud-amd64/boot/vmlinuz-6.1.0-57-cloud-amd64");
        let kernel = resolve(image.to_str().unwrap(), cache.path()).unwrap();
        assert_eq!(kernel.release, "6.1.0-57-cloud-amd64");
        assert_eq!(kernel.modules, cache.path().join("6.1.0-57-cloud-amd64/lib/modules/6.1.0-57-cloud-amd64"));
    }

    #[test]
    fn releases_order_by_their_numbers() {
        assert!(version_order("6.1.0-9", "6.1.0-57").is_lt());
        assert!(version_order("6.12.1", "6.1.99").is_gt());
        assert!(matches_prefix("6.1.0-57-cloud-amd64", "6.1"));
        assert!(!matches_prefix("6.12.118+deb12-cloud-amd64", "6.1"));
        assert!(matches_prefix("6.12.118+deb12-cloud-amd64", "6.12"));
    }
}
