//! Block volumes for the rig: a volume in `Block` mode is a loop device over a sparse image
//! under the kubelet root, and the kubelet's part is the link it publishes for a pod that
//! attaches the claim (`pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>` → `/dev/loopN`).
//! Every device the rig attached is detached when the rig is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why block volumes cannot be played here, if they cannot: loop devices need root and
/// `losetup`.
pub fn unavailable() -> Option<String> {
    let probe = tempfile::NamedTempFile::new().ok()?;
    probe.as_file().set_len(1 << 20).ok()?;
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(probe.path())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            None
        }
        Ok(o) => Some(format!(
            "losetup cannot attach a loop device: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("losetup cannot run: {e}")),
    }
}

fn images(kubelet: &Path) -> PathBuf {
    kubelet.join("block-images")
}

/// The loop device of volume `pv`, attached over a new sparse image of `size` bytes on first
/// use.
pub fn device(kubelet: &Path, pv: &str, size: u64) -> PathBuf {
    let dir = images(kubelet);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(format!("{pv}.dev"));
    if let Ok(dev) = std::fs::read_link(&link) {
        return dev;
    }
    let image = dir.join(format!("{pv}.img"));
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(size).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    dev
}

/// The loop device of volume `pv`, if it has one.
pub fn device_of(kubelet: &Path, pv: &str) -> Option<PathBuf> {
    std::fs::read_link(images(kubelet).join(format!("{pv}.dev"))).ok()
}

/// Where the kubelet publishes a block CSI volume for a pod.
pub fn device_link(kubelet: &Path, pod_uid: &str, pv: &str) -> PathBuf {
    kubelet
        .join("pods")
        .join(pod_uid)
        .join("volumeDevices/kubernetes.io~csi")
        .join(pv)
}

/// Plays the kubelet for a pod that attaches block volume `pv`.
pub fn publish(kubelet: &Path, pod_uid: &str, pv: &str, device: &Path) {
    let link = device_link(kubelet, pod_uid, pv);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(device, &link).unwrap();
    }
}

/// Detaches every loop device attached for this kubelet root.
pub fn detach_all(kubelet: &Path) {
    let Ok(entries) = std::fs::read_dir(images(kubelet)) else {
        return;
    };
    for e in entries.flatten() {
        if let Ok(dev) = std::fs::read_link(e.path()) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
    }
}

/// The first `len` bytes of a device.
pub fn read(device: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut out = vec![0u8; len];
    std::fs::File::open(device)
        .unwrap()
        .read_exact(&mut out)
        .unwrap();
    out
}

/// Writes `data` at `offset` of a device, through to it.
pub fn write(device: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// The bytes a quantity such as `64Mi` or `1Gi` stands for.
pub fn bytes(quantity: &str) -> u64 {
    let (n, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let n: u64 = n.parse().unwrap_or(0);
    n << match unit {
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => 0,
    }
}

/// Copies a whole device into the file `to` (a snapshot's image).
pub fn copy_out(device: &Path, to: &Path) {
    let mut from = std::fs::File::open(device).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut from, &mut out).unwrap();
}

/// Copies the image `from` onto a device (a volume restored from a snapshot).
pub fn copy_in(from: &Path, device: &Path) {
    let mut input = std::fs::File::open(from).unwrap();
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap();
    std::io::copy(&mut input, &mut dev).unwrap();
    dev.sync_all().unwrap();
}
