//! Builds the guest component (`rollingops.wasm`) so the host library and CLI embed the
//! exact logic they were built with. The nested cargo uses its own target directory, so
//! it never waits on the outer build's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    // Every file, not just the directories: a directory's own mtime does not change when a
    // file inside it is edited in place.
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.toml"] {
        watch(&root.join(watched));
    }
    println!("cargo:rerun-if-env-changed=ROLLINGOPS_WASM");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = out.join("rollingops.wasm");

    // A prebuilt component may be supplied (e.g. the one a release ships).
    if let Ok(path) = env::var("ROLLINGOPS_WASM") {
        std::fs::copy(&path, &target)
            .unwrap_or_else(|e| panic!("copying ROLLINGOPS_WASM={path}: {e}"));
        return;
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let guest_target = root.join("target").join("guest-build");
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "rollingops-guest",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&guest_target);
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC_")
            || key == "RUSTFLAGS"
        {
            command.env_remove(key);
        }
    }
    let status = command
        .status()
        .expect("running cargo for the guest component");
    assert!(
        status.success(),
        "building the guest component failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    );
    let built = guest_target.join("wasm32-wasip2/wasm/rollingops_guest.wasm");
    std::fs::copy(&built, &target).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

fn watch(path: &std::path::Path) {
    println!("cargo:rerun-if-changed={}", path.display());
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            watch(&entry.path());
        }
    }
}
