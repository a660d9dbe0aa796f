//! Names the git commit the binary is built from (`tagstream --version`), or "unknown" where
//! there is no git or no repository (a source tarball, a Docker build without `.git`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The package directory of this build, read when the script runs: a compiled build script is
/// shared by every checkout that uses the same build directory (cargo hashes path packages
/// relative to their workspace), so a path fixed when it was compiled may be another, even a
/// deleted, checkout (which made `--version` say "unknown").
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TAGSTREAM_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself changes on a checkout, the branch's ref (loose,
    // or in packed-refs) on a commit. Only existing files are watched: cargo reruns the
    // script on every build for a path that does not exist.
    // In a linked worktree HEAD is the worktree's own, while branch refs and packed-refs live
    // in the common directory of the repository.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        let common = git(&["rev-parse", "--git-common-dir"])
            .map(|c| manifest_dir().join(c))
            .unwrap_or_else(|| git_dir.clone());
        let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
        if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                watch.push(common.join(r));
            }
        }
        for path in watch.iter().filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
