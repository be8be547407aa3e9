//! Locating and reading the shared fixtures. A missing folder fails the test
//! that needs it: a silently skipped fixture test would hide a broken
//! checkout.

use std::path::PathBuf;

use serde_json::Value;

pub fn dir() -> PathBuf {
    let dir = std::env::var_os("HERALD_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures"
            ))
        });
    assert!(
        dir.is_dir(),
        "fixtures folder {} not found: clone the repo with shared/ beside it or set HERALD_FIXTURES_DIR",
        dir.display()
    );
    dir
}

pub fn bytes(relative: &str) -> Vec<u8> {
    let path = dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

pub fn text(relative: &str) -> String {
    String::from_utf8(bytes(relative))
        .unwrap_or_else(|e| panic!("fixture {relative} is not UTF-8: {e}"))
}

pub fn json(relative: &str) -> Value {
    serde_json::from_slice(&bytes(relative))
        .unwrap_or_else(|e| panic!("fixture {relative} is not JSON: {e}"))
}
