//! The precompiled component under `base_dir`: a pure function of its key.
//!
//! Key = sha256(component bytes) + the engine's precompile compatibility hash + the
//! wasmtime version. A file whose name matches the key is still only trusted after it
//! deserialises; anything unreadable is recompiled and replaced (temp file + rename).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How the component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache file.
    Hit,
    /// Compiled and written to the cache.
    Compiled,
    /// A cache file existed but could not be used; compiled and replaced.
    Rebuilt,
    /// No cache directory: compiled in memory.
    Uncached,
}

/// The cache file name for `wasm` under `engine`.
pub fn key(engine: &Engine, wasm: &[u8]) -> String {
    let digest = Sha256::digest(wasm);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "rollingops-{hex}-wasmtime{}-{:016x}.cwasm",
        wasmtime_version(),
        hasher.finish()
    )
}

fn wasmtime_version() -> &'static str {
    "48"
}

/// Load `wasm` through the cache directory `dir` (created if needed).
pub fn load(
    engine: &Engine,
    wasm: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<(Component, CacheOutcome)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, wasm)?, CacheOutcome::Uncached));
    };
    let path: PathBuf = dir.join(key(engine, wasm));
    let existed = path.exists();
    if existed {
        // SAFETY: the file is ours: its name carries the sha256 of the exact component and
        // the engine's compatibility hash, and wasmtime validates the header (version,
        // target, flags) before use. Anything that fails to load is recompiled below.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
            return Ok((component, CacheOutcome::Hit));
        }
    }
    let bytes = engine.precompile_component(wasm)?;
    // SAFETY: these bytes were produced by this engine a moment ago.
    let component = unsafe { Component::deserialize(engine, &bytes)? };
    if std::fs::create_dir_all(dir).is_ok() {
        let temp = dir.join(format!(".{}.{}.tmp", key(engine, wasm), std::process::id()));
        if std::fs::write(&temp, &bytes).is_ok() {
            let _ = std::fs::rename(&temp, &path);
        }
        let _ = std::fs::remove_file(&temp);
    }
    Ok((
        component,
        if existed {
            CacheOutcome::Rebuilt
        } else {
            CacheOutcome::Compiled
        },
    ))
}
