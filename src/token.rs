//! Where the secrets come from: the join token (nodes prove it to join) and the admin token
//! (the control endpoint's bearer token), each from a flag, a file or the environment.
//!
//! A file is read once, at start; its one line is the token (a final line ending is not part
//! of it). An empty token, from anywhere, is refused rather than taken for "none".

use std::path::Path;

use crate::BadInput;

/// The longest admin token taken (the join token must also fit the link: 64).
pub(crate) const MAX_ADMIN_TOKEN: usize = 256;

/// One secret's sources, in the order they are tried.
pub(crate) struct Sources<'a> {
    /// What it is, for messages: "join token".
    pub what: &'a str,
    /// `--join-token` and its value.
    pub flag: (&'a str, Option<&'a str>),
    /// `--join-token-file` and its path.
    pub file: (&'a str, Option<&'a Path>),
    /// `PBXLAB_JOIN_TOKEN`.
    pub env: &'a str,
    /// A deprecated flag and variable that stand in for it (`--token`, `PBXLAB_TOKEN`).
    pub deprecated: Option<(&'a str, Option<&'a str>, &'a str)>,
    /// The longest token taken.
    pub max_len: usize,
}

/// The secret from the first source that has one; `None` if none has.
pub(crate) fn read(s: &Sources<'_>) -> Result<Option<String>, BadInput> {
    let (flag, value) = s.flag;
    let (file_flag, path) = s.file;
    if value.is_some() && path.is_some() {
        return Err(BadInput(format!("give {flag} or {file_flag}, not both")));
    }
    let (token, from) = if let Some(v) = value {
        (v.to_owned(), flag.to_owned())
    } else if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("{file_flag} {}: {e}", path.display())))?;
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        (line.to_owned(), format!("{file_flag} {}", path.display()))
    } else if let Some(v) = std::env::var_os(s.env) {
        (v.to_string_lossy().into_owned(), format!("${}", s.env))
    } else if let Some((old_flag, old_value, old_env)) = s.deprecated {
        let old = match old_value {
            Some(v) => Some((v.to_owned(), old_flag.to_owned())),
            None => std::env::var_os(old_env)
                .map(|v| (v.to_string_lossy().into_owned(), format!("${old_env}"))),
        };
        let Some((token, from)) = old else {
            return Ok(None);
        };
        eprintln!(
            "warning: {from} is deprecated; it gives the {} only: use {flag}, {file_flag} or ${}",
            s.what, s.env
        );
        (token, from)
    } else {
        return Ok(None);
    };
    check(s.what, &from, &token, s.max_len)?;
    Ok(Some(token))
}

fn check(what: &str, from: &str, token: &str, max_len: usize) -> Result<(), BadInput> {
    if token.is_empty() {
        return Err(BadInput(format!("{from}: the {what} is empty")));
    }
    if token.len() > max_len || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadInput(format!(
            "{from}: the {what} must be 1 to {max_len} visible ASCII characters, no spaces"
        )));
    }
    Ok(())
}

/// The join token, from `--join-token`, `--join-token-file`, `$PBXLAB_JOIN_TOKEN` or the
/// deprecated `--token` / `$PBXLAB_TOKEN`, as `pbxlab cluster` and `pbxlab node` both take it.
pub(crate) fn join_token(
    flag: Option<&str>,
    file: Option<&Path>,
    deprecated: Option<&str>,
) -> Result<Option<String>, BadInput> {
    read(&Sources {
        what: "join token",
        flag: ("--join-token", flag),
        file: ("--join-token-file", file),
        env: "PBXLAB_JOIN_TOKEN",
        deprecated: Some(("--token", deprecated, "PBXLAB_TOKEN")),
        max_len: pbxlab_cluster::link::MAX_WORD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources<'a>(value: Option<&'a str>, file: Option<&'a Path>) -> Sources<'a> {
        Sources {
            what: "join token",
            flag: ("--join-token", value),
            file: ("--join-token-file", file),
            env: "PBXLAB_TEST_TOKEN_NEVER_SET",
            deprecated: None,
            max_len: 64,
        }
    }

    #[test]
    fn a_flag_a_file_and_their_refusals() {
        assert_eq!(
            read(&sources(Some("abc"), None)).unwrap(),
            Some("abc".into())
        );
        assert_eq!(read(&sources(None, None)).unwrap(), None);
        let e = read(&sources(Some(""), None)).unwrap_err();
        assert!(
            e.0.contains("--join-token: the join token is empty"),
            "{}",
            e.0
        );
        let dir = std::env::temp_dir().join(format!("pbxlab-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        assert_eq!(
            read(&sources(None, Some(&file))).unwrap(),
            Some("s3cret".into())
        );
        std::fs::write(&file, "\n").unwrap();
        let e = read(&sources(None, Some(&file))).unwrap_err();
        assert!(e.0.contains("is empty"), "{}", e.0);
        std::fs::write(&file, "two words").unwrap();
        assert!(read(&sources(None, Some(&file))).is_err());
        assert!(
            read(&sources(Some("a"), Some(&file)))
                .unwrap_err()
                .0
                .contains("not both")
        );
        assert!(read(&sources(None, Some(&dir.join("none")))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
