//! deploy/mkdeb.sh (the .deb of the cross builds, made with dpkg-deb) packages what
//! `[package.metadata.deb]` in Cargo.toml lists for cargo-deb, with the same maintainer
//! scripts, so the arm64/armhf packages and an x86-64 `cargo deb` stay alike. Run here on
//! the host binary (`--arch amd64`); CI also runs the script for the cross builds.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_airbridge");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Fail the test unless the tools the script needs are there.
fn tools_present() {
    let missing: Vec<&str> = ["dpkg-deb", "readelf", "md5sum", "gzip"]
        .into_iter()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    if !missing.is_empty() {
        crate::common::tool::missing(&missing.join(", "), "apt-get install dpkg binutils");
    }
}

fn deb_metadata() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(REPO)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "airbridge"))
        .map(|p| p["metadata"]["deb"].clone())
        .expect("[package.metadata.deb]")
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs dpkg-deb and readelf: apt-get install dpkg binutils"]
fn mkdeb_packages_what_the_cargo_deb_metadata_lists() {
    tools_present();
    let dir: PathBuf = std::env::temp_dir().join(format!("airbridge-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("deploy/mkdeb.sh"))
        .args(["--fast", "--arch", "amd64", "--binary", BIN, "--out"])
        .arg(&dir)
        .output()
        .expect("run mkdeb.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let want_name = format!("airbridge_{}_amd64.deb", env!("CARGO_PKG_VERSION"));
    assert_eq!(deb.file_name().and_then(|n| n.to_str()), Some(&*want_name));

    // Every asset's destination is in the package (man pages gzipped, as cargo-deb does).
    let files: Vec<String> = dpkg_deb(&["--contents"], &deb)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    let has = |p: &str| files.iter().any(|f| f == p || *f == format!("{p}.gz"));
    let meta = deb_metadata();
    for asset in meta["assets"].as_array().expect("assets") {
        let src = asset[0].as_str().expect("source");
        let dest = asset[1].as_str().expect("dest");
        if let Some(dir) = dest.strip_suffix('/') {
            if let Some((src_dir, ext)) = src.rsplit_once("/*.") {
                for e in std::fs::read_dir(Path::new(REPO).join(src_dir))
                    .expect("dir")
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(&format!(".{ext}")) {
                        assert!(has(&format!("{dir}/{name}")), "{dir}/{name} in {files:?}");
                    }
                }
            } else {
                let name = Path::new(src).file_name().expect("name").to_string_lossy();
                assert!(has(&format!("{dir}/{name}")), "{src} → {dest} in {files:?}");
            }
        } else {
            assert!(has(dest), "{dest} in {files:?}");
        }
    }
    assert!(has("lib/systemd/system/airbridge.service"), "{files:?}");
    assert!(has("usr/share/doc/airbridge/copyright"), "{files:?}");

    let control = dpkg_deb(&["--field"], &deb);
    assert!(control.contains("Package: airbridge\n"), "{control}");
    assert!(control.contains("Architecture: amd64\n"), "{control}");
    assert!(control.contains("libc6 (>= 2."), "{control}");
    assert!(control.contains("passwd"), "{control}");
    for field in ["section", "priority"] {
        let v = meta[field].as_str().expect(field);
        assert!(control.contains(v), "{field} {v}: {control}");
    }

    // Maintainer scripts: the repository's postinst with #DEBHELPER# filled in; conffiles
    // include the one Cargo.toml names.
    let ctrl_dir = dir.join("control");
    let out = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&ctrl_dir)
        .output()
        .expect("dpkg-deb --control");
    assert!(out.status.success());
    let postinst = std::fs::read_to_string(ctrl_dir.join("postinst")).expect("postinst");
    assert!(postinst.contains("useradd --system") && postinst.contains("dialout"));
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    for never in [
        "systemctl enable",
        "systemctl start",
        "deb-systemd-invoke start",
    ] {
        assert!(
            !postinst.contains(never),
            "enable = false, start = false: {postinst}"
        );
    }
    let conffiles = std::fs::read_to_string(ctrl_dir.join("conffiles")).expect("conffiles");
    for c in meta["conf-files"].as_array().expect("conf-files") {
        let c = c.as_str().expect("path");
        assert!(conffiles.lines().any(|l| l == c), "{c} in {conffiles}");
    }
    for script in ["prerm", "postrm"] {
        assert!(ctrl_dir.join(script).is_file(), "{script}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
