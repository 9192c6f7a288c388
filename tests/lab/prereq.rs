//! What the lab needs from the machine, checked before anything is built, so a machine without
//! it skips the lab with a reason (or fails with that reason when the lab is required).
//!
//! - Linux with user namespaces: `patchbay::init_userns()` enters one, in which this process
//!   is root and may create network namespaces.
//! - `nft` (Debian package `nftables`) and the kernel's nf_tables: every NAT, filter and the
//!   WAN input guard is an nftables rule set.
//!
//! patchbay's README also asks for `tc` (iproute2); patchbay runs it only for link
//! conditions and region links, which this lab does not use (these machines' kernels have no
//! netem qdisc), so it is not a prerequisite here.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::runner;
use crate::topology::NFT_TIMEOUT;

/// The `nft` program, found as patchbay finds it (`/usr/sbin/nft` first, then `PATH`).
pub(crate) fn nft_program() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/nft");
    if sbin.is_file() {
        return Some(sbin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
}

/// Checks that need no namespace: the platform, `nft`, and whether user namespaces are enabled.
pub(crate) fn check_machine() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("the NAT lab needs Linux network namespaces".into());
    }
    if nft_program().is_none() {
        return Err("nft not found (install the Debian package nftables)".into());
    }
    if read_number("/proc/sys/user/max_user_namespaces") == Some(0) {
        return Err("user namespaces are disabled (sysctl user.max_user_namespaces = 0)".into());
    }
    if !is_root() {
        if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
            return Err("unprivileged user namespaces are disabled \
                 (sysctl kernel.unprivileged_userns_clone = 0)"
                .into());
        }
        if read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
            return Err("AppArmor restricts unprivileged user namespaces \
                 (sysctl kernel.apparmor_restrict_unprivileged_userns = 1)"
                .into());
        }
    }
    Ok(())
}

/// Loads and deletes an empty nftables table inside the lab's root namespace: proves that the
/// kernel has nf_tables and that `nft` works in a namespace of this user namespace.
pub(crate) async fn probe_nftables(lab: &patchbay::Lab) -> anyhow::Result<()> {
    let rules = "table ip natter_probe {\n}\ndelete table ip natter_probe\n";
    let nft = nft_program().context("nft not found")?;
    let ix = lab.ix();
    runner::run(
        |cmd| ix.spawn_command(cmd),
        &nft,
        &["-f".as_ref(), "-".as_ref()],
        rules,
        NFT_TIMEOUT,
    )
    .await?
    .success("nft cannot load rules in a network namespace")?;
    Ok(())
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Effective uid 0, from `/proc/self/status` (the lab has no libc binding of its own).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
