//! Binary → string forms of the two identity attributes AD returns as octet
//! strings: `objectSid` and `objectGUID`.

use anyhow::{Result, bail};

/// Formats a binary SID (MS-DTYP 2.4.2.2) as `S-1-5-21-…`.
///
/// Layout: revision (1 byte), sub-authority count (1 byte), identifier
/// authority (6 bytes, big-endian), then that many 32-bit little-endian
/// sub-authorities.
pub fn sid_to_string(bytes: &[u8]) -> Result<String> {
    let Some((&[revision, count], rest)) = bytes.split_first_chunk::<2>() else {
        bail!("SID too short: {} bytes", bytes.len());
    };
    let Some((authority, subs)) = rest.split_first_chunk::<6>() else {
        bail!("SID too short: {} bytes", bytes.len());
    };
    if subs.len() != usize::from(count) * 4 {
        bail!("SID says {count} sub-authorities but has {} bytes for them", subs.len());
    }
    let subs: String =
        subs.chunks_exact(4).map(|b| format!("-{}", u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
    Ok(format!("S-{revision}-{}{subs}", authority_to_string(*authority)))
}

/// MS-DTYP writes authorities that do not fit in 32 bits in hex; in practice
/// they are always small (5 = NT AUTHORITY), so decimal is what you will see.
fn authority_to_string(authority: [u8; 6]) -> String {
    let value = authority.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if value >= 1 << 32 { format!("0x{value:012X}") } else { value.to_string() }
}

/// Formats a binary GUID as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form AD
/// tools print and `<GUID=…>` DNs accept.
///
/// The first three fields are stored little-endian (Microsoft's GUID struct
/// layout), the last eight bytes in order, so a plain hex dump would not match
/// what AD shows.
pub fn guid_to_string(bytes: &[u8]) -> Result<String> {
    let Ok(b) = <&[u8; 16]>::try_from(bytes) else {
        bail!("GUID must be 16 bytes, got {}", bytes.len());
    };
    Ok(format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a binary SID the way AD stores it, so tests read naturally.
    fn sid_bytes(authority: u64, subs: &[u32]) -> Vec<u8> {
        let mut bytes = vec![1, u8::try_from(subs.len()).unwrap()];
        bytes.extend_from_slice(&authority.to_be_bytes()[2..]);
        for sub in subs {
            bytes.extend_from_slice(&sub.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn domain_user_sid() {
        let bytes = sid_bytes(5, &[21, 365990648, 2786426528, 1854558830, 1104]);
        assert_eq!(sid_to_string(&bytes).unwrap(), "S-1-5-21-365990648-2786426528-1854558830-1104");
    }

    #[test]
    fn well_known_sids() {
        // Everyone and BUILTIN\Administrators.
        assert_eq!(sid_to_string(&sid_bytes(1, &[0])).unwrap(), "S-1-1-0");
        assert_eq!(sid_to_string(&sid_bytes(5, &[32, 544])).unwrap(), "S-1-5-32-544");
        // Null SID with no sub-authorities at all.
        assert_eq!(sid_to_string(&sid_bytes(0, &[])).unwrap(), "S-1-0");
    }

    #[test]
    fn known_bytes_from_ad() {
        // S-1-5-21-1004336348-1177238915-682003330-512 (Domain Admins), as bytes.
        let bytes = [
            0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x15, 0x00, 0x00, 0x00, 0xdc, 0xf4, 0xdc, 0x3b, 0x83, 0x3d,
            0x2b, 0x46, 0x82, 0x8b, 0xa6, 0x28, 0x00, 0x02, 0x00, 0x00,
        ];
        assert_eq!(sid_to_string(&bytes).unwrap(), "S-1-5-21-1004336348-1177238915-682003330-512");
    }

    #[test]
    fn max_sub_authority_is_unsigned() {
        assert_eq!(sid_to_string(&sid_bytes(5, &[u32::MAX])).unwrap(), "S-1-5-4294967295");
    }

    #[test]
    fn large_authority_is_hex() {
        assert_eq!(sid_to_string(&sid_bytes(0x0102_0304_0506, &[7])).unwrap(), "S-1-0x010203040506-7");
    }

    #[test]
    fn rejects_truncated_or_inconsistent_sids() {
        assert!(sid_to_string(&[]).is_err());
        assert!(sid_to_string(&[1, 0, 0, 0, 0]).is_err());
        let mut bytes = sid_bytes(5, &[21, 1, 2]);
        bytes.pop();
        assert!(sid_to_string(&bytes).is_err());
        let mut bytes = sid_bytes(5, &[21]);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert!(sid_to_string(&bytes).is_err());
    }

    #[test]
    fn guid_mixed_endian_layout() {
        let bytes = [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(guid_to_string(&bytes).unwrap(), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn guid_wrong_length() {
        assert!(guid_to_string(&[0; 15]).is_err());
        assert!(guid_to_string(&[0; 17]).is_err());
    }
}
