//! Our users and the SIPp injection files that list them: [`Users`] is the table the engine
//! registers and calls from (each user's user part, digest username and password, kept in one
//! buffer), and [`UsersFile::parse`] reads SIPp's `-inf` format into one.
//!
//! The format as SIPp reads it (its `src/infile.cpp`), and what pbxlab makes of it:
//! - The first line says how rows are used: `SEQUENTIAL`, `RANDOM` or `USER`. For pbxlab every
//!   row is one user, registered once, in file order; the word decides who places and who
//!   receives each call ([`UserOrder`]). SIPp's `PRINTF` options (rows made from a pattern) are
//!   refused.
//! - A line with `#` in its first column is a comment, as in SIPp. SIPp stops reading at the
//!   first empty line, so blank lines are skipped at the end of the file and refused before
//!   further rows (SIPp would never see them).
//! - A row is `;`-separated fields. The first is the user part of the user's address of record:
//!   any SIP user part (`1000`, `alice`, `+4930123`). One other field may be SIPp's keyword
//!   `[authentication username=U password=P]`, which SIPp scenarios inject with `[fieldN]`: U is
//!   the digest username (default: the user part), P the password (default: the run's shared
//!   password; a row with neither is refused). A value may be quoted (`password="a b"`); none
//!   can hold `;`, which ends a field in SIPp's format whatever the quotes. The other fields
//!   belong to SIPp scenarios and are ignored.
//! - Lines end in LF or CRLF; the text is UTF-8 (a leading byte-order mark is skipped).
//!
//! Every bound is explicit: a file of at most [`UsersFile::MAX_BYTES`], fields of at most
//! [`MAX_FIELD_BYTES`].

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::Error;

/// The longest user part, digest username or password a users file may give.
pub const MAX_FIELD_BYTES: usize = 256;

/// One user of a [`Users`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User<'a> {
    /// The user part of its address of record: `sip:NAME@domain`, and of our Contact.
    pub name: &'a str,
    /// The username its digest credentials give.
    pub username: &'a str,
    pub password: &'a str,
}

/// Our users, in order. One buffer holds every user's strings, so 50,000 users cost about a
/// megabyte rather than three allocations each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    /// Each user's user part, username and password, back to back.
    text: String,
    /// Per user, where its three strings end in `text`; each starts where the one before ends.
    ends: Vec<[usize; 3]>,
    /// For a table of numbered users whose numbers step evenly (`--users`, a shard of them):
    /// the first number and the step, so a user is found by its number without an index.
    progression: Option<(u32, u32)>,
}

/// How numbered users' digest passwords are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// User N's password is this prefix followed by N: what pbxlab's cluster and the interop
    /// tests' Kamailio expect with `pw-`.
    Prefix(String),
    /// One password for every user.
    Shared(String),
}

impl Password {
    /// User `n`'s password by this rule.
    pub fn of(&self, n: u64) -> String {
        match self {
            Password::Prefix(prefix) => format!("{prefix}{n}"),
            Password::Shared(p) => p.clone(),
        }
    }
}

impl Users {
    pub fn new() -> Users {
        Users::default()
    }

    /// Users named by these numbers, each its own digest username, with passwords by `password`.
    pub fn numbered(numbers: impl IntoIterator<Item = u32>, password: &Password) -> Users {
        let mut users = Users::new();
        // (first, step, last) while the numbers step evenly.
        let mut even: Option<(u32, Option<u32>, u32)> = None;
        let mut stepping = true;
        for n in numbers {
            even = match even {
                None => Some((n, None, n)),
                Some((first, step, last)) => {
                    let this = n.checked_sub(last).filter(|&d| d > 0);
                    stepping &= this.is_some() && (step.is_none() || step == this);
                    Some((first, step.or(this), n))
                }
            };
            // Writing to a String cannot fail.
            let _ = write!(users.text, "{n}");
            let name = users.text.len();
            let _ = write!(users.text, "{n}");
            let username = users.text.len();
            match password {
                Password::Prefix(prefix) => {
                    let _ = write!(users.text, "{prefix}{n}");
                }
                Password::Shared(p) => users.text.push_str(p),
            }
            users.ends.push([name, username, users.text.len()]);
        }
        users.progression = even
            .filter(|_| stepping)
            .map(|(first, step, _)| (first, step.unwrap_or(1)));
        users
    }

    /// The index of the user with this user part, when the table is numbered evenly; `None`
    /// when it is not (the caller keeps an index) or no user has that name.
    pub fn numbered_index(&self, name: &str) -> Option<Option<usize>> {
        let (first, step) = self.progression?;
        // Only the canonical decimal form names a numbered user ("01000" is not user 1000).
        let canonical = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && (name == "0" || !name.starts_with('0'));
        let n = canonical.then(|| name.parse::<u32>().ok()).flatten();
        Some(n.and_then(|n| {
            let k = n.checked_sub(first)?;
            (k % step == 0)
                .then_some((k / step) as usize)
                .filter(|&i| i < self.len())
        }))
    }

    pub fn push(&mut self, user: User<'_>) {
        let mut ends = [0; 3];
        for (end, s) in ends
            .iter_mut()
            .zip([user.name, user.username, user.password])
        {
            self.text.push_str(s);
            *end = self.text.len();
        }
        self.ends.push(ends);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// User `i`, in the table's order.
    pub fn get(&self, i: usize) -> Option<User<'_>> {
        let [name, username, password] = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before)?[2],
            None => 0,
        };
        Some(User {
            name: self.text.get(start..name)?,
            username: self.text.get(name..username)?,
            password: self.text.get(username..password)?,
        })
    }

    /// The user part of user `i` ("" if there is none).
    pub fn name(&self, i: usize) -> &str {
        self.get(i).map_or("", |u| u.name)
    }

    pub fn iter(&self) -> impl Iterator<Item = User<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Slice `shard` of `shards`: every `shards`-th user from the `shard`-th, so the slices
    /// never share a user and together are the table.
    pub fn slice(&self, shard: u32, shards: u32) -> Users {
        let mut out = Users::new();
        let step = shards.max(1) as usize;
        for u in self.iter().skip(shard as usize).step_by(step) {
            out.push(u);
        }
        out.progression = self.progression.and_then(|(first, s)| {
            let first = first.checked_add(s.checked_mul(shard)?)?;
            Some((first, s.checked_mul(shards.max(1))?))
        });
        out
    }
}

/// Which of our users places each call, and which receives it when our users call each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserOrder {
    /// Call k's caller is user k (counted round the callers), its callee the user half the
    /// table away, so the two differ: SIPp's SEQUENTIAL, which gives call k line k.
    #[default]
    Sequential,
    /// Caller, and a different callee, drawn uniformly for each call from the run's seed: SIPp's
    /// RANDOM, which draws a line for each call.
    Random,
    /// SIPp's USER, where line k belongs to SIPp's user k for all its calls. pbxlab's rows are
    /// its users anyway, so its calls take them as [`UserOrder::Sequential`] does.
    User,
}

/// A users file, read: how its rows are used and the users they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersFile {
    pub order: UserOrder,
    pub users: Users,
}

/// A problem on line `line` (1-based) of a users file.
fn at(line: usize, reason: impl Into<String>) -> Error {
    Error::UsersFile {
        line: Some(line),
        reason: reason.into(),
    }
}

impl UsersFile {
    /// The largest users file read (about a million rows).
    pub const MAX_BYTES: usize = 64 << 20;

    /// Reads a users file in SIPp's injection format (see the module's documentation). Rows
    /// that give no password get `default_password`; without one they are refused. Every
    /// error names the line and the problem.
    pub fn parse(bytes: &[u8], default_password: Option<&str>) -> Result<UsersFile, Error> {
        if bytes.len() > UsersFile::MAX_BYTES {
            return Err(Error::UsersFile {
                line: None,
                reason: format!(
                    "{} bytes: a users file may have at most {} MiB",
                    bytes.len(),
                    UsersFile::MAX_BYTES >> 20
                ),
            });
        }
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let mut lines = bytes
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .enumerate()
            .map(|(i, l)| (i + 1, l));
        let header = match lines.next() {
            Some((_, l)) if !l.is_empty() => l,
            _ => {
                return Err(at(
                    1,
                    "empty: the first line says how rows are used: SEQUENTIAL, RANDOM or USER",
                ));
            }
        };
        let order = parse_header(text(1, header)?)?;
        let mut users = Users::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut blank: Option<usize> = None;
        for (n, line) in lines {
            let line = text(n, line)?;
            if line.trim().is_empty() {
                blank = blank.or(Some(n));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            if let Some(b) = blank {
                return Err(at(
                    b,
                    format!(
                        "a blank line before the row on line {n}: SIPp stops reading at a blank \
                         line and would not see the rows after it; remove it"
                    ),
                ));
            }
            let row = parse_row(n, line, default_password)?;
            if let Some(first) = seen.get(row.name) {
                return Err(at(
                    n,
                    format!("user {:?} again (first on line {first})", row.name),
                ));
            }
            seen.insert(row.name.to_owned(), n);
            users.push(row);
        }
        if users.is_empty() {
            return Err(Error::UsersFile {
                line: None,
                reason: "no users: every line after the first is blank or a comment".into(),
            });
        }
        Ok(UsersFile { order, users })
    }
}

fn text(n: usize, line: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(line).map_err(|e| {
        at(
            n,
            format!("not UTF-8 (a bad byte at column {})", e.valid_up_to() + 1),
        )
    })
}

fn parse_header(line: &str) -> Result<UserOrder, Error> {
    let mut words = line.trim().split(',').map(str::trim);
    let order = match words.next().unwrap_or_default() {
        "SEQUENTIAL" => UserOrder::Sequential,
        "RANDOM" => UserOrder::Random,
        "USER" => UserOrder::User,
        _ if line.contains("PRINTF") => return Err(printf()),
        other => {
            return Err(at(
                1,
                format!(
                    "the first line says how rows are used: SEQUENTIAL, RANDOM or USER, not {other:?}"
                ),
            ));
        }
    };
    match words.next() {
        None => Ok(order),
        Some(w) if w.starts_with("PRINTF") => Err(printf()),
        Some(w) => Err(at(
            1,
            format!("{w:?}: the first line takes only SEQUENTIAL, RANDOM or USER"),
        )),
    }
}

fn printf() -> Error {
    at(
        1,
        "SIPp's PRINTF files (rows made from a pattern) are not supported: write one row per user",
    )
}

/// One row: its user, with the password `default_password` gives if the row has none.
fn parse_row<'a>(
    n: usize,
    line: &'a str,
    default_password: Option<&'a str>,
) -> Result<User<'a>, Error> {
    let mut fields = line.split(';');
    let name = fields.next().unwrap_or_default();
    if let Some(problem) = user_part_problem(name) {
        return Err(at(n, problem));
    }
    let mut auth: Option<(Option<&str>, Option<&str>)> = None;
    for field in fields {
        let field = field.trim();
        let Some(inner) = field.strip_prefix("[authentication") else {
            continue;
        };
        if auth.is_some() {
            return Err(at(n, "two [authentication ...] fields; a row has one"));
        }
        let Some(inner) = inner.strip_suffix(']') else {
            return Err(at(
                n,
                format!(
                    "{field:?}: no closing ']' (write [authentication username=U password=P]; \
                     ';' ends a field, so no value can hold one)"
                ),
            ));
        };
        if !inner.is_empty() && !inner.starts_with(char::is_whitespace) {
            return Err(at(
                n,
                format!("{field:?}: write [authentication username=U password=P]"),
            ));
        }
        auth = Some(parse_auth(n, inner)?);
    }
    let (username, password) = auth.unwrap_or((None, None));
    let username = username.unwrap_or(name);
    let Some(password) = password.or(default_password) else {
        return Err(at(
            n,
            format!(
                "user {name:?} has no password: give [authentication username=U password=P] \
                 or --password"
            ),
        ));
    };
    Ok(User {
        name,
        username,
        password,
    })
}

/// The username and password of an `[authentication ...]` field's parameters, each if given.
fn parse_auth(n: usize, params: &str) -> Result<(Option<&str>, Option<&str>), Error> {
    let (mut username, mut password) = (None, None);
    let mut rest = params.trim_start();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            return Err(at(
                n,
                format!("{rest:?}: a parameter is written name=value"),
            ));
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(at(n, format!("{key:?}: a parameter is written name=value")));
        }
        let value;
        if let Some(quoted) = after.strip_prefix('"') {
            let Some((v, tail)) = quoted.split_once('"') else {
                return Err(at(
                    n,
                    format!("{key}: the quoted value has no closing '\"'"),
                ));
            };
            if !tail.is_empty() && !tail.starts_with(char::is_whitespace) {
                return Err(at(
                    n,
                    format!("{key}: a space must follow the quoted value"),
                ));
            }
            value = v;
            rest = tail.trim_start();
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            value = &after[..end];
            rest = after[end..].trim_start();
            if value.contains([',', '"']) {
                return Err(at(
                    n,
                    format!("{key}={value}: SIPp ends an unquoted value at ',' or '\"'; quote it"),
                ));
            }
        }
        if value.len() > MAX_FIELD_BYTES || value.contains(char::is_control) {
            return Err(at(
                n,
                format!("{key}: at most {MAX_FIELD_BYTES} bytes, and no control characters"),
            ));
        }
        let slot = match key.to_ascii_lowercase().as_str() {
            "username" => {
                if value.is_empty() || value.contains('\\') {
                    return Err(at(n, "username: not empty, and no '\\'"));
                }
                &mut username
            }
            "password" => &mut password,
            "aka_k" | "aka_op" | "aka_amf" => {
                return Err(at(
                    n,
                    format!("{key}: AKA credentials are not supported (MD5 digest only)"),
                ));
            }
            _ => {
                return Err(at(
                    n,
                    format!("{key}: unknown; [authentication] takes username and password"),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(at(n, format!("{key} given twice")));
        }
    }
    Ok((username, password))
}

/// What keeps `s` from being a SIP user part (RFC 3261 25.1: unreserved and user-unreserved
/// characters and %HH escapes; `;` cannot occur, it ends the field), if anything.
fn user_part_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("no user part: a row starts with one (user;...)".into());
    }
    if s.len() > MAX_FIELD_BYTES {
        return Some(format!(
            "user part of {} bytes: at most {MAX_FIELD_BYTES}",
            s.len()
        ));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Some(format!(
                    "user part {s:?}: '%' starts an escape of two hex digits"
                ));
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,?/".contains(&b)) {
            let c = s[i..].chars().next().unwrap_or_default();
            return Some(format!(
                "user part {s:?}: {c:?} is not allowed in a SIP user part (escape it as %HH)"
            ));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<UsersFile, Error> {
        UsersFile::parse(text.as_bytes(), None)
    }

    /// The line and reason of a refused file.
    fn refused(text: &str) -> (Option<usize>, String) {
        match parse(text) {
            Err(Error::UsersFile { line, reason }) => (line, reason),
            other => panic!("{text:?}: refused, not {other:?}"),
        }
    }

    fn names(f: &UsersFile) -> Vec<&str> {
        f.users.iter().map(|u| u.name).collect()
    }

    #[test]
    fn each_header_gives_its_order() {
        for (header, order) in [
            ("SEQUENTIAL", UserOrder::Sequential),
            ("RANDOM", UserOrder::Random),
            ("USER", UserOrder::User),
        ] {
            let f = parse(&format!(
                "{header}\nalice;[authentication username=alice password=a]\n"
            ))
            .expect("reads");
            assert_eq!(f.order, order, "{header}");
            assert_eq!(names(&f), ["alice"]);
        }
        for bad in ["sequential", "ORDERED", "alice;x", ""] {
            let (line, reason) = refused(&format!("{bad}\nalice;[authentication password=a]\n"));
            assert_eq!(line, Some(1), "{bad:?}");
            assert!(reason.contains("SEQUENTIAL, RANDOM or USER"), "{reason}");
        }
        let (line, reason) = refused("SEQUENTIAL,PRINTF=10\nuser%d;x\n");
        assert_eq!(line, Some(1));
        assert!(reason.contains("PRINTF"), "{reason}");
    }

    #[test]
    fn rows_give_user_part_username_and_password() {
        let f = parse(
            "SEQUENTIAL\r\n\
             # a comment, as in SIPp\r\n\
             1000;[authentication username=1000 password=pw-1000]\r\n\
             alice;sipphone32;[authentication username=alice-auth password=\"s3cret word\"];ignored\r\n\
             +4930123;[authentication password=x]\r\n\
             \r\n\
             \r\n",
        )
        .expect("reads");
        let users: Vec<User<'_>> = f.users.iter().collect();
        assert_eq!(
            users,
            [
                User {
                    name: "1000",
                    username: "1000",
                    password: "pw-1000"
                },
                User {
                    name: "alice",
                    username: "alice-auth",
                    password: "s3cret word"
                },
                // No username: the user part.
                User {
                    name: "+4930123",
                    username: "+4930123",
                    password: "x"
                },
            ]
        );
        // A byte-order mark and no final newline.
        let f = parse("\u{feff}RANDOM\nbob;[authentication password=b]").expect("reads");
        assert_eq!((f.order, names(&f)), (UserOrder::Random, vec!["bob"]));
    }

    #[test]
    fn a_row_without_a_password_takes_the_shared_one_or_is_refused() {
        let text =
            "USER\nalice;[authentication password=a]\nbob\ncarol;[authentication username=c]\n";
        let (line, reason) = refused(text);
        assert_eq!(line, Some(3));
        assert!(reason.contains("\"bob\" has no password"), "{reason}");
        assert!(reason.contains("--password"), "{reason}");
        let f = UsersFile::parse(text.as_bytes(), Some("shared")).expect("reads");
        let passwords: Vec<(&str, &str)> =
            f.users.iter().map(|u| (u.username, u.password)).collect();
        assert_eq!(
            passwords,
            [("alice", "a"), ("bob", "shared"), ("c", "shared")],
            "a row's own password wins"
        );
    }

    #[test]
    fn a_user_twice_is_refused_with_both_lines() {
        let (line, reason) = refused(
            "SEQUENTIAL\nalice;[authentication password=a]\nbob;[authentication password=b]\n\
             alice;[authentication password=c]\n",
        );
        assert_eq!(line, Some(4));
        assert!(
            reason.contains("\"alice\" again (first on line 2)"),
            "{reason}"
        );
        // Two user parts may share one digest username.
        let f = parse(
            "SEQUENTIAL\na;[authentication username=shared password=p]\n\
             b;[authentication username=shared password=p]\n",
        )
        .expect("reads");
        assert_eq!(f.users.len(), 2);
    }

    #[test]
    fn bad_rows_are_refused_with_their_line_and_problem() {
        for (row, problem) in [
            (";[authentication password=a]", "no user part"),
            ("al ice;[authentication password=a]", "' ' is not allowed"),
            ("alice@example.com", "'@' is not allowed"),
            ("50%;[authentication password=a]", "'%' starts an escape"),
            (" # indented", "' ' is not allowed"),
            ("alice;[authentication password=a", "no closing ']'"),
            (
                "alice;[authentication password=a;b]",
                "no value can hold one",
            ),
            ("alice;[authenticationpassword=a]", "write [authentication"),
            ("alice;[authentication password]", "name=value"),
            ("alice;[authentication secret=a]", "secret: unknown"),
            ("alice;[authentication aka_K=00 password=a]", "AKA"),
            (
                "alice;[authentication password=a password=b]",
                "given twice",
            ),
            ("alice;[authentication password=\"a]", "no closing"),
            ("alice;[authentication password=a,b]", "quote it"),
            (
                "alice;[authentication username= password=a]",
                "username: not empty",
            ),
            (
                "alice;[authentication password=a];[authentication password=a]",
                "two [authentication",
            ),
        ] {
            let (line, reason) = refused(&format!(
                "SEQUENTIAL\nok;[authentication password=p]\n{row}\n"
            ));
            assert_eq!(line, Some(3), "{row:?}: {reason}");
            assert!(reason.contains(problem), "{row:?}: {reason}");
        }
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let (_, reason) = refused(&format!("SEQUENTIAL\n{long};[authentication password=p]\n"));
        assert!(reason.contains("at most 256"), "{reason}");
        let (line, reason) = refused(&format!(
            "SEQUENTIAL\nalice;[authentication password={long}]\n"
        ));
        assert_eq!(line, Some(2));
        assert!(reason.contains("at most 256"), "{reason}");
        // Escapes and user-unreserved characters are fine.
        let f = parse("SEQUENTIAL\nal%20ice;[authentication password=a]\nx&y=z+$,?/;[authentication password=a]\n")
            .expect("reads");
        assert_eq!(names(&f), ["al%20ice", "x&y=z+$,?/"]);
    }

    #[test]
    fn blank_lines_end_the_file_and_may_not_hide_rows() {
        let (line, reason) = refused(
            "SEQUENTIAL\na;[authentication password=a]\n\n# fine\nb;[authentication password=b]\n",
        );
        assert_eq!(line, Some(3));
        assert!(reason.contains("the row on line 5"), "{reason}");
        assert!(reason.contains("SIPp stops reading"), "{reason}");
        let f = parse("SEQUENTIAL\na;[authentication password=a]\n  \n# a comment after\n")
            .expect("reads");
        assert_eq!(names(&f), ["a"]);
    }

    #[test]
    fn files_without_users_or_text_are_refused() {
        assert_eq!(refused("").0, Some(1));
        assert_eq!(refused("\nalice\n").0, Some(1));
        let (line, reason) = refused("SEQUENTIAL\n# only a comment\n");
        assert_eq!(line, None);
        assert!(reason.contains("no users"), "{reason}");
        let (line, reason) = match UsersFile::parse(b"SEQUENTIAL\nal\xffce;x\n", Some("p")) {
            Err(Error::UsersFile { line, reason }) => (line, reason),
            other => panic!("refused, not {other:?}"),
        };
        assert_eq!(line, Some(2));
        assert!(reason.contains("UTF-8"), "{reason}");
        let big = vec![b'#'; UsersFile::MAX_BYTES + 1];
        assert!(matches!(
            UsersFile::parse(&big, None),
            Err(Error::UsersFile { line: None, .. })
        ));
    }

    #[test]
    fn numbered_users_get_their_passwords_and_slices_share_none() {
        let users = Users::numbered(1000..1004, &Password::Prefix("pw-".into()));
        let all: Vec<User<'_>> = users.iter().collect();
        assert_eq!(
            all[1],
            User {
                name: "1001",
                username: "1001",
                password: "pw-1001"
            }
        );
        // Numbered evenly, a user is found by its number, in the canonical form only.
        assert_eq!(users.numbered_index("1002"), Some(Some(2)));
        for absent in ["999", "1004", "01002", "+1002", "1002x", "", "abc"] {
            assert_eq!(users.numbered_index(absent), Some(None), "{absent:?}");
        }
        let odd = Users::numbered([5, 9, 10], &Password::Shared("p".into()));
        assert_eq!(
            odd.numbered_index("9"),
            None,
            "not an even step: the caller indexes"
        );
        let evens = Users::numbered((0..10).map(|k| 100 + 2 * k), &Password::Shared("p".into()));
        assert_eq!(evens.numbered_index("104"), Some(Some(2)));
        assert_eq!(evens.numbered_index("105"), Some(None));
        let half = users.slice(1, 2);
        assert_eq!(half.numbered_index("1003"), Some(Some(1)));
        assert_eq!(half.numbered_index("1002"), Some(None));
        let mut named = Users::new();
        named.push(User {
            name: "alice",
            username: "alice",
            password: "a",
        });
        assert_eq!(named.numbered_index("alice"), None);
        let shared = Users::numbered([7], &Password::Shared("one".into()));
        assert_eq!(shared.get(0).map(|u| u.password), Some("one"));
        assert_eq!(users.get(4), None);
        assert_eq!(users.name(9), "");
        let (a, b) = (users.slice(0, 2), users.slice(1, 2));
        let names = |u: &Users| u.iter().map(|u| u.name.to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&a), ["1000", "1002"]);
        assert_eq!(names(&b), ["1001", "1003"]);
        assert_eq!(b.get(1), users.get(3));
        assert_eq!(users.slice(0, 1), users);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = UsersFile::parse(&bytes, Some("p"));
        }

        #[test]
        fn text_like_a_users_file_is_read_or_refused_at_one_of_its_lines(
            rows in proptest::collection::vec("[a-z0-9;=\\[\\]\" #%,\t]{0,40}", 0..8)
        ) {
            let text = format!("SEQUENTIAL\n{}", rows.join("\n"));
            match UsersFile::parse(text.as_bytes(), None) {
                Ok(f) => prop_assert!(!f.users.is_empty() && f.users.len() <= rows.len()),
                Err(Error::UsersFile { line, .. }) => {
                    prop_assert!(line.is_none_or(|l| (1..=rows.len() + 1).contains(&l)));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn users_written_as_rows_read_back_as_the_same_table(
            users in proptest::collection::btree_map(
                "[a-zA-Z0-9._+-]{1,12}",
                ("[a-zA-Z0-9._@-]{1,12}", "[ !#-:<-~]{0,16}"),
                1..20,
            ),
            order in prop_oneof![Just("SEQUENTIAL"), Just("RANDOM"), Just("USER")],
        ) {
            let mut text = format!("{order}\r\n");
            let mut table = Users::new();
            for (name, (username, password)) in &users {
                text.push_str(&format!(
                    "{name};x;[authentication username={username} password=\"{password}\"];y\r\n"
                ));
                table.push(User { name, username, password });
            }
            let f = UsersFile::parse(text.as_bytes(), None).map_err(|e| {
                TestCaseError::fail(format!("{e}\n{text}"))
            })?;
            prop_assert_eq!(f.users, table);
        }
    }
}
