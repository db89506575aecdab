//! The pinned Apache Kafka release's jars, fetched once with Maven into
//! `target/kafka-jars/<version>/` and used as the JVMs' classpath.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io, ClusterError, KAFKA_VERSION};

/// The workspace's `target/` directory (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The directory holding the pinned release's jars, fetched with Maven on
/// first use (`mvn dependency:copy-dependencies`; artifacts cached in
/// `~/.m2`). Safe to call from several processes at once (a file lock).
pub fn jars() -> Result<PathBuf, ClusterError> {
    let target = target_dir();
    let dir = target.join(format!("kafka-jars/{KAFKA_VERSION}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(target.join("kafka-jars")).map_err(io("create target/kafka-jars"))?;
    let lock_file = std::fs::File::create(target.join("kafka-jars/.lock"))
        .map_err(io("create target/kafka-jars/.lock"))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when it closes.
    unsafe {
        libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX);
    }
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("pom.xml");
    let out = Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", dir.display()))
        .output()
        .map_err(|e| ClusterError::Fetch(format!("cannot run mvn: {e}")))?;
    if !out.status.success() {
        return Err(ClusterError::Fetch(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(dir.join(".complete"), KAFKA_VERSION).map_err(io("mark the jars complete"))?;
    Ok(dir)
}

/// The Kafka jars as a `java -cp` classpath.
pub fn java_classpath() -> Result<String, ClusterError> {
    Ok(format!("{}/*", jars()?.display()))
}
