//! What an app id in a policy may look like.
//!
//! Ids travel into Cloud Controller queries (`guids=a,b`), listing filters (`id=a,b`) and
//! tag rows, where a comma or a space would make one id read as several, so they are refused
//! for everyone. Non-admins act on Cloud Foundry apps, whose guids are always lowercase
//! UUIDs; anything else cannot be one of their apps. Admins keep free-form ids for
//! platforms outside Cloud Foundry.

/// The longest id (in characters) the `groups.guid` column holds.
pub const MAX_LEN: usize = 255;

/// Why `id` can never be an app id, if it cannot.
pub fn problem(id: &str) -> Option<&'static str> {
    if id.chars().count() > MAX_LEN {
        return Some("longer than 255 characters");
    }
    // U+FEFF is not whitespace to Rust but is to JSON Schema's `\s`; refuse it too.
    if id.chars().any(|c| c == ',' || c == '\u{feff}' || c.is_whitespace() || c.is_control()) {
        return Some("must not contain commas, whitespace or control characters");
    }
    None
}

/// A Cloud Controller guid: lowercase hex in the 8-4-4-4-12 layout.
pub fn is_app_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "0f2a4c8e-1b3d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn separators_whitespace_and_controls_are_problems() {
        assert_eq!(problem(GUID), None);
        assert_eq!(problem("free-form.app_id"), None);
        for bad in [
            format!("{GUID},x1"),
            format!("{GUID} "),
            format!(" {GUID}"),
            format!("{GUID}\tx"),
            format!("{GUID}\n"),
            format!("{GUID}\u{0}"),
            format!("{GUID}\u{85}"),
            format!("{GUID}\u{a0}"),
            format!("{GUID}\u{3000}"),
            ",".into(),
            "a".repeat(256),
            "\u{feff}x".into(),
        ] {
            assert!(problem(&bad).is_some(), "{bad:?}");
        }
        assert_eq!(problem(&"a".repeat(255)), None);
        assert_eq!(problem(&"é".repeat(255)), None, "characters, as the column counts them");
    }

    #[test]
    fn only_lowercase_uuids_are_app_guids() {
        assert!(is_app_guid(GUID));
        for bad in [
            GUID.to_uppercase(),
            format!("{GUID},x1"),
            format!("{GUID}-"),
            GUID.replace('-', ""),
            GUID.replacen('0', "g", 1),
            format!("{}x", &GUID[..GUID.len() - 1]),
            "app-1".into(),
            String::new(),
            "0f2a4c8e-1b3d-4e5f-8a9b-0c1d2e3f4a5".into(),
            "0f2a4c8e1-b3d-4e5f-8a9b-0c1d2e3f4a5b".into(),
        ] {
            assert!(!is_app_guid(&bad), "{bad:?}");
        }
    }
}
