//! `ethtool -K`: a device's offload features by name, read and switched off through `ioctl(SIOCETHTOOL)`.

use std::io;
use std::os::fd::RawFd;

/// `ethtool -K <ifname> tx off sg off tso off gso off gro off lro off` and the like, by feature name
/// (ETHTOOL_GSTRINGS, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES, as ethtool itself does): every transmit checksum, scatter-gather, segmentation and receive-aggregation feature the device can
/// change goes off, so the capture sees the segments the wire carries, with their final checksums.
/// Fails if one of them is still active afterwards (a feature the device cannot turn off).
pub fn turn_off_offloads(socket: RawFd, ifname: &str) -> io::Result<()> {
    let names = feature_names(socket, ifname)?;
    let before = features(socket, ifname, names.len())?;
    let wanted_off: Vec<usize> =
        (0..names.len()).filter(|&bit| is_offload(&names[bit]) && before.available(bit)).collect();
    set_features_off(socket, ifname, names.len(), &wanted_off)?;
    let still_on = offloads_active(&names, &features(socket, ifname, names.len())?);
    if !still_on.is_empty() {
        return Err(io::Error::other(format!("cannot turn off {}", still_on.join(", "))));
    }
    Ok(())
}

/// `ethtool -K <ifname> rx off`: the device no longer vouches for received checksums, so the stack verifies
/// them (and drops and counts a frame whose checksum fails).
pub fn turn_off_rx_checksum(socket: RawFd, ifname: &str) -> io::Result<()> {
    let names = feature_names(socket, ifname)?;
    let rx_checksum: Vec<usize> = (0..names.len()).filter(|&bit| names[bit] == "rx-checksum").collect();
    set_features_off(socket, ifname, names.len(), &rx_checksum)?;
    let state = features(socket, ifname, names.len())?;
    if rx_checksum.iter().any(|&bit| state.active(bit)) {
        return Err(io::Error::other("cannot turn off rx-checksum"));
    }
    Ok(())
}

/// Names (as `ethtool -k` prints them) of the offloads [`turn_off_offloads`] deals with that are active.
pub fn active_offloads(socket: RawFd, ifname: &str) -> io::Result<Vec<String>> {
    let names = feature_names(socket, ifname)?;
    let state = features(socket, ifname, names.len())?;
    Ok(offloads_active(&names, &state))
}

pub(super) fn offloads_active(names: &[String], state: &FeatureState) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .filter(|(bit, name)| is_offload(name) && state.active(*bit))
        .map(|(_, name)| name.clone())
        .collect()
}

/// Whether a feature (by its `ethtool -k` name) lets the stack hand the device something other than a
/// finished wire frame, or merge received frames before the capture sees them.
pub(super) fn is_offload(name: &str) -> bool {
    name.starts_with("tx-checksum-")
        || name.starts_with("tx-scatter-gather")
        || name.ends_with("-segmentation")
        || name.starts_with("rx-gro")
        || matches!(name, "rx-lro" | "tx-gso-list" | "tx-gso-partial" | "rx-udp-gro-forwarding")
}

pub(super) const ETHTOOL_GSTRINGS: u32 = 0x1b;
pub(super) const ETHTOOL_GSSET_INFO: u32 = 0x37;
pub(super) const ETHTOOL_GFEATURES: u32 = 0x3a;
pub(super) const ETHTOOL_SFEATURES: u32 = 0x3b;
pub(super) const ETH_SS_FEATURES: u32 = 4;
pub(super) const ETH_GSTRING_LEN: usize = 32;

/// `ioctl(SIOCETHTOOL)` on `request` (an ethtool command struct starting with its `cmd`); returns the ioctl's
/// non-negative result. Any socket carries device ioctls for the namespace it was created in.
pub(super) fn ethtool_ioctl(socket: RawFd, ifname: &str, request: &mut [u32]) -> io::Result<i32> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value of it.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifreq.ifr_name.len() || ifname.bytes().any(|b| b == 0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    ifreq.ifr_ifru.ifru_data = request.as_mut_ptr().cast();
    // SAFETY: `ifreq` names a NUL-terminated interface and points at `request`, which outlives the call and is
    // as large as the command's struct (callers size it from the counts the kernel reported).
    let result = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut ifreq) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// The device's feature names by bit (`ethtool --show-features` string set).
pub(super) fn feature_names(socket: RawFd, ifname: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[1] }
    let mut info = [ETHTOOL_GSSET_INFO, 0, 0, 0, 0];
    let mask = 1u64 << ETH_SS_FEATURES;
    info[2..4].copy_from_slice(&[mask as u32, (mask >> 32) as u32]);
    if cfg!(target_endian = "big") {
        info.swap(2, 3);
    }
    ethtool_ioctl(socket, ifname, &mut info)?;
    let count = info[4] as usize;
    if count == 0 {
        return Err(io::Error::other("the device names no features (ethtool --show-features is empty)"));
    }

    // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * ETH_GSTRING_LEN] }
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool_ioctl(socket, ifname, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|word| word.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|raw| String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
        .collect())
}

/// `struct ethtool_gfeatures` blocks: per 32 features, available / requested / active / never_changed.
pub(super) struct FeatureState {
    blocks: Vec<[u32; 4]>,
}

impl FeatureState {
    pub(super) fn bit(&self, field: usize, bit: usize) -> bool {
        self.blocks.get(bit / 32).is_some_and(|block| block[field] & (1 << (bit % 32)) != 0)
    }

    pub(super) fn available(&self, bit: usize) -> bool {
        self.bit(0, bit)
    }

    pub(super) fn active(&self, bit: usize) -> bool {
        self.bit(2, bit)
    }
}

pub(super) fn features(socket: RawFd, ifname: &str, count: usize) -> io::Result<FeatureState> {
    let size = count.div_ceil(32);
    let mut request = vec![0u32; 2 + 4 * size];
    request[..2].copy_from_slice(&[ETHTOOL_GFEATURES, size as u32]);
    ethtool_ioctl(socket, ifname, &mut request)?;
    Ok(FeatureState { blocks: request[2..].chunks(4).map(|b| [b[0], b[1], b[2], b[3]]).collect() })
}

pub(super) fn set_features_off(socket: RawFd, ifname: &str, count: usize, bits: &[usize]) -> io::Result<()> {
    let size = count.div_ceil(32);
    // struct ethtool_sfeatures { cmd, size, { valid, requested }[size] }; requested stays 0: off.
    let mut request = vec![0u32; 2 + 2 * size];
    request[..2].copy_from_slice(&[ETHTOOL_SFEATURES, size as u32]);
    for &bit in bits {
        request[2 + 2 * (bit / 32)] |= 1 << (bit % 32);
    }
    ethtool_ioctl(socket, ifname, &mut request).map(drop)
}
