//! Tensor names: the `/`-joined key path of a pytree leaf. A key that contains
//! `/` or `~` is escaped as in JSON Pointer (RFC 6901): `~` → `~0`, `/` → `~1`.

/// Escapes one key so it can be a path segment.
pub fn escape_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Reverses [`escape_key`].
pub fn unescape_key(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Joins keys into a tensor name.
pub fn join_path<S: AsRef<str>>(keys: &[S]) -> String {
    keys.iter().map(|k| escape_key(k.as_ref())).collect::<Vec<_>>().join("/")
}

/// Splits a tensor name back into keys.
pub fn split_path(name: &str) -> Vec<String> {
    name.split('/').map(unescape_key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let keys = ["net", "a/b", "~x~1", "", "LIF0.V"];
        let name = join_path(&keys);
        assert_eq!(name, "net/a~1b/~0x~01//LIF0.V");
        assert_eq!(split_path(&name), keys);
    }
}
