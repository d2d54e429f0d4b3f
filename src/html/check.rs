//! A small well-formedness checker for the pages `--html` writes (used by the tests only): every
//! element closed in order, attributes quoted, no stray `<` and every `&` an entity. The pages
//! are written as XHTML-compatible markup so that their SVG parts, and the whole page, pass it.

/// One start tag: its name and attributes, in document order.
#[derive(Debug, Clone)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The elements of `doc`, or where and why it is not well-formed.
pub fn elements(doc: &str) -> Result<Vec<Element>, String> {
    let b = doc.as_bytes();
    let mut i = 0;
    let mut open: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let at = |i: usize| format!("at byte {i}: {:?}", &doc[i..(i + 60).min(doc.len())]);
    while i < b.len() {
        match b[i] {
            b'<' if doc[i..].starts_with("<!DOCTYPE") => {
                i += doc[i..].find('>').ok_or_else(|| at(i))? + 1;
            }
            b'<' if doc[i..].starts_with("</") => {
                let end = i + doc[i..].find('>').ok_or_else(|| at(i))?;
                let name = doc[i + 2..end].trim();
                match open.pop() {
                    Some(o) if o == name => {}
                    other => return Err(format!("</{name}> closes {other:?} {}", at(i))),
                }
                i = end + 1;
            }
            b'<' => {
                let (element, end, closed) =
                    start_tag(doc, i).map_err(|e| format!("{e} {}", at(i)))?;
                if !closed {
                    open.push(element.name.clone());
                }
                out.push(element);
                i = end;
            }
            b'&' => {
                entity(&doc[i..]).ok_or_else(|| format!("a bare & {}", at(i)))?;
                i += 1;
            }
            b'>' => {
                return Err(format!("a stray > {}", at(i)));
            }
            _ => i += 1,
        }
    }
    match open.last() {
        Some(o) => Err(format!("<{o}> is never closed")),
        None => Ok(out),
    }
}

/// Whether `s` starts with an entity XML knows (or a character reference).
fn entity(s: &str) -> Option<()> {
    let end = s.find(';')?;
    let name = &s[1..end];
    let known = ["amp", "lt", "gt", "quot", "apos"].contains(&name)
        || name
            .strip_prefix('#')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    known.then_some(())
}

/// The start tag at `i`: the element, where it ends, and whether it closed itself (`/>`).
fn start_tag(doc: &str, i: usize) -> Result<(Element, usize, bool), String> {
    let b = doc.as_bytes();
    let mut j = i + 1;
    let name_end = |j: usize| {
        let mut k = j;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b"-_:".contains(&b[k])) {
            k += 1;
        }
        k
    };
    let k = name_end(j);
    if k == j {
        return Err("a < that opens no tag".into());
    }
    let name = doc[j..k].to_owned();
    j = k;
    let mut attrs = Vec::new();
    loop {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        match b.get(j) {
            None => return Err(format!("<{name}> is cut off")),
            Some(b'>') => return Ok((Element { name, attrs }, j + 1, false)),
            Some(b'/') if b.get(j + 1) == Some(&b'>') => {
                return Ok((Element { name, attrs }, j + 2, true));
            }
            Some(_) => {
                let k = name_end(j);
                if k == j || b.get(k) != Some(&b'=') || b.get(k + 1) != Some(&b'"') {
                    return Err(format!("<{name}>: an attribute not written name=\"value\""));
                }
                let key = doc[j..k].to_owned();
                let start = k + 2;
                let len = doc[start..]
                    .find('"')
                    .ok_or_else(|| format!("<{name}>: {key} is never closed"))?;
                let value = &doc[start..start + len];
                if value.contains('<') {
                    return Err(format!("<{name}>: a < in {key}"));
                }
                for (n, _) in value.match_indices('&') {
                    entity(&value[n..]).ok_or_else(|| format!("<{name}>: a bare & in {key}"))?;
                }
                attrs.push((key, value.to_owned()));
                j = start + len + 1;
            }
        }
    }
}

/// The numbers in a polyline's `points`, as (x, y) pairs.
pub fn points(attr: &str) -> Result<Vec<(f64, f64)>, String> {
    attr.split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').ok_or_else(|| format!("point {p:?}"))?;
            Ok((
                x.parse().map_err(|_| format!("x {x:?}"))?,
                y.parse().map_err(|_| format!("y {y:?}"))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_refuses_what_is_not_well_formed() {
        assert!(elements("<p a=\"1\"><b>x &amp; y</b><br/></p>").is_ok());
        for bad in [
            "<p><b>x</p></b>",
            "<p>",
            "<p>a & b</p>",
            "<p a=1></p>",
            "<p a=\"<\"></p>",
            "<p>1 < 2</p>",
            "<p>2 > 1</p>",
            "<p a=\"x\"",
        ] {
            assert!(elements(bad).is_err(), "{bad}");
        }
        assert_eq!(
            points("1,2 3.5,4").expect("reads"),
            [(1.0, 2.0), (3.5, 4.0)]
        );
    }
}
