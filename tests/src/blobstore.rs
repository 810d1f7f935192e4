//! What a kura data directory holds under `blobs/`, checked against the
//! names: `<data-dir>/blobs/<alg>/<xx>/<hex>` must hold bytes whose `<alg>`
//! digest is `<hex>`, and `<xx>` must be the first two characters of
//! `<hex>`. "Verified before visible" means a scan finds nothing bad,
//! whatever an upstream did.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// A blob file whose bytes or place do not match its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlob {
    pub path: PathBuf,
    /// What its path says it holds (`sha256:<hex>`), or the path's flaw.
    pub expected: String,
    /// What it holds, or why it could not be read.
    pub actual: String,
}

/// The result of [`scan`].
#[derive(Debug, Default)]
pub struct BlobScan {
    /// Blob files looked at.
    pub checked: usize,
    pub bad: Vec<BadBlob>,
}

/// Walk `<data_dir>/blobs/<alg>/<xx>/<hex>` and hash every file, returning
/// those whose bytes or path do not match. object_store's staging files
/// (names containing `#`) are not blobs yet, and are skipped.
pub fn scan(data_dir: &Path) -> BlobScan {
    let mut out = BlobScan::default();
    let Ok(algs) = std::fs::read_dir(data_dir.join("blobs")) else {
        return out;
    };
    for alg in algs.flatten() {
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        for file in files_under(&alg.path()) {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.contains('#') {
                continue;
            }
            out.checked += 1;
            let expected = format!("{alg_name}:{name}");
            let prefix = file
                .parent()
                .and_then(Path::file_name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let placed = file.parent().and_then(Path::parent) == Some(alg.path().as_path())
                && name.len() > 2
                && name.starts_with(&prefix);
            if !placed {
                out.bad.push(BadBlob {
                    path: file,
                    expected: format!("a file at blobs/{alg_name}/<xx>/<hex>"),
                    actual: "misplaced".into(),
                });
                continue;
            }
            let actual = match file_digest(&file, &alg_name) {
                Ok(d) => d,
                Err(e) => e,
            };
            if actual != expected {
                out.bad.push(BadBlob {
                    path: file,
                    expected,
                    actual,
                });
            }
        }
    }
    out
}

/// [`scan`]'s mismatches only.
pub fn bad_blobs(data_dir: &Path) -> Vec<BadBlob> {
    scan(data_dir).bad
}

/// Every file under `dir`, recursively (an unreadable directory is skipped).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `<alg>:<hex>` of the file, or why not.
fn file_digest(path: &Path, alg: &str) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("unreadable: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut update = |h: &mut dyn FnMut(&[u8])| -> Result<(), String> {
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("unreadable: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            h(&buf[..n]);
        }
    };
    let hex = match alg {
        "sha256" => {
            let mut h = sha2::Sha256::new();
            update(&mut |b| h.update(b))?;
            hex::encode(h.finalize())
        }
        "sha512" => {
            let mut h = sha2::Sha512::new();
            update(&mut |b| h.update(b))?;
            hex::encode(h.finalize())
        }
        other => return Err(format!("unknown algorithm {other}")),
    };
    Ok(format!("{alg}:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wrong_bytes_and_misplaced_files() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, bytes: &[u8]| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        };
        let good = crate::sha256(b"good");
        let hex = good.strip_prefix("sha256:").unwrap();
        put(&format!("blobs/sha256/{}/{hex}", &hex[..2]), b"good");
        assert_eq!(scan(dir.path()).checked, 1);
        assert!(bad_blobs(dir.path()).is_empty());
        // Staging files are not blobs yet.
        put(&format!("blobs/sha256/{}/{hex}#1", &hex[..2]), b"partial");
        assert!(bad_blobs(dir.path()).is_empty());
        let other = crate::sha256(b"other");
        let ohex = other.strip_prefix("sha256:").unwrap();
        put(&format!("blobs/sha256/{}/{ohex}", &ohex[..2]), b"not other");
        put(&format!("blobs/sha256/zz/{hex}"), b"good");
        let bad = bad_blobs(dir.path());
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad.iter().any(|b| b.expected == other));
        assert!(bad.iter().any(|b| b.actual == "misplaced"));
    }
}
