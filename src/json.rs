//! Checks on JSON text that serde would only make by parsing it.

/// Whether `json` (valid JSON text) nests arrays and objects deeper than `max`: one pass over
/// the bytes, skipping strings, with no allocation. Parsers refuse deep values (serde_json at
/// 128 levels, some far fewer), so a deep payload relayed to a client could stop it reading.
pub(crate) fn depth_exceeds(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert!(!depth_exceeds(b"1", 0));
        assert!(!depth_exceeds(b"[1,{\"a\":[2]}]", 3));
        assert!(depth_exceeds(b"[1,{\"a\":[2]}]", 2));
        assert!(
            !depth_exceeds(br#"["[[[[\"[[["]"#, 1),
            "brackets in strings do not count"
        );
        assert!(
            !depth_exceeds(br#"[[],[],[]]"#, 2),
            "siblings do not add up"
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(depth_exceeds(deep.as_bytes(), 64));
    }
}
