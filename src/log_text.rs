//! Text from payloads in log lines: control characters escaped, so that a branch name with a
//! line break cannot forge a line of the text log (the JSON log escapes on its own, and this
//! keeps its values unquoted).

use std::fmt;

/// Displays a string with its control characters escaped (`\n`, `\u{1b}`, …).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
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
