//! Text from payloads in log lines: control characters escaped, so that a branch name with a
//! line break cannot forge a line of the text log (the JSON log escapes on its own, and this
//! keeps its values unquoted).

use std::fmt;

/// Displays a string with its control characters escaped (`\n`, `\u{1b}`, …).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Runs of ordinary characters in one write each: this is on every delivery's line.
        let mut rest = self.0;
        while let Some((at, c)) = rest.char_indices().find(|(_, c)| c.is_control()) {
            f.write_str(&rest[..at])?;
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(Escaped("feature/ü-1").to_string(), "feature/ü-1");
        assert_eq!(Escaped("a\nb\r\x1b[31m").to_string(), r"a\nb\r\u{1b}[31m");
    }
}
