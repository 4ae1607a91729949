//! Which netfault this is: the crate version and the git commit it was built from (`netfault --version`,
//! result.json).

/// The git commit of the build (`git rev-parse --short=12 HEAD`, `-dirty` with uncommitted changes to tracked
/// files), `unknown` when built outside a git checkout.
pub const COMMIT: &str = env!("NETFAULT_COMMIT");

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `0.1.0 (commit 0123456789ab)`, as `netfault --version` prints it after the name.
pub const LONG: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("NETFAULT_COMMIT"), ")");
