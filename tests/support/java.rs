//! The Java client (`clients/android/`) for the tests that run it: finding `javac`, `java` and
//! Android's org.json, and compiling the library, its tests and its example once per test
//! process, under the cargo target dir (never into the source tree).
//!
//! Under `CI=true` a missing JDK or jar fails the test; elsewhere it skips, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Debian's `libandroid-json-java`: Android's own org.json, the one dependency of the client.
pub const ORG_JSON: &str = "/usr/share/java/com.android.json.jar";

/// Whether the tests must run (CI) or may skip when a tool is missing.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the JDK and org.json are here; outside CI their absence skips, loudly.
pub fn available() -> bool {
    let missing: Vec<&str> = [
        ("javac", runs("javac")),
        ("java", runs("java")),
        (ORG_JSON, Path::new(ORG_JSON).exists()),
    ]
    .into_iter()
    .filter(|(_, present)| !present)
    .map(|(what, _)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !in_ci(),
        "{missing:?} required under CI=true (apt-get install openjdk-17-jdk-headless libandroid-json-java)"
    );
    eprintln!("\n!!! SKIPPED: {missing:?} missing; the Java (Android) client was NOT tested !!!\n");
    false
}

fn java_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            java_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "java") {
            out.push(path);
        }
    }
}

/// Compiles the client, its tests and its example at the Java 11 level into `out` (once per
/// process); returns the class path to run them with. Panics with javac's report if they do
/// not compile.
pub fn classpath(out: &Path) -> String {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/android");
            let mut sources = Vec::new();
            for dir in ["src/main/java", "src/test/java", "examples"] {
                java_files(&root.join(dir), &mut sources);
            }
            let _ = std::fs::remove_dir_all(out);
            std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
            let output = Command::new("javac")
                .args([
                    "--release",
                    "11",
                    "-Xlint:all",
                    "-Werror",
                    "-encoding",
                    "UTF-8",
                ])
                .args(["-cp", ORG_JSON, "-d"])
                .arg(out)
                .args(&sources)
                .output()
                .map_err(|e| format!("run javac: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "javac failed:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            Ok(format!("{}:{ORG_JSON}", out.display()))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}
