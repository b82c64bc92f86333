//! `${VAR}` / `${VAR:-default}` replacement in config strings (SPEC §3).
//!
//! A `$` not followed by `{` is literal, because webhook secrets often contain one, and `$${`
//! writes a literal `${`.

/// Why a string could not be interpolated. The caller adds which key it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR}` without a default, and `VAR` is not set.
    #[error("environment variable {0} is not set (write ${{{0}:-default}} to allow that)")]
    Unset(String),
    /// `${` without its closing `}`.
    #[error("unterminated ${{…}}")]
    Unterminated,
    /// `${}` or a name with characters other than letters, digits and `_`.
    #[error("invalid variable name {0:?}")]
    BadName(String),
    /// `${A:-${B}}`: a default is plain text; nesting is not supported (it would silently
    /// become the text `${B}`, e.g. a guessable secret).
    #[error(
        "a ${{…}} inside the default of ${{{0}:-…}} is not supported; the default is plain text (write $${{ for a literal ${{)"
    )]
    Nested(String),
}

/// Replaces every `${VAR}` and `${VAR:-default}` in `input`, looking variables up with `env`.
pub fn interpolate(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body_start) = after.strip_prefix('{') {
            let end = body_start.find('}').ok_or(InterpolateError::Unterminated)?;
            let body = &body_start[..end];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if default.is_some_and(|d| d.contains("${") && !d.contains("$${")) {
                return Err(InterpolateError::Nested(name.to_owned()));
            }
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return Err(InterpolateError::BadName(name.to_owned()));
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(InterpolateError::Unset(name.to_owned())),
            }
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn a_variable_inside_a_default_is_refused_not_taken_literally() {
        assert_eq!(
            interpolate("${NOPE:-${HOME_DIR}}", &env),
            Err(InterpolateError::Nested("NOPE".into()))
        );
        assert!(
            interpolate("${NOPE:-${HOME_DIR}}", &env)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(
            interpolate("${HOME_DIR}/data", &env).unwrap(),
            "/home/x/data"
        );
        assert_eq!(interpolate("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(interpolate("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(interpolate("${EMPTY:-x}", &env).unwrap(), "");
        assert_eq!(
            interpolate("a${HOME_DIR}b${NOPE:-c}d", &env).unwrap(),
            "a/home/xbcd"
        );
    }

    #[test]
    fn dollar_without_brace_is_literal_and_double_dollar_escapes() {
        assert_eq!(
            interpolate("Gkvl$k$wyNpQAF42", &env).unwrap(),
            "Gkvl$k$wyNpQAF42"
        );
        assert_eq!(interpolate("trailing$", &env).unwrap(), "trailing$");
        assert_eq!(interpolate("$${HOME_DIR}", &env).unwrap(), "${HOME_DIR}");
        assert_eq!(interpolate("$$", &env).unwrap(), "$$");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            interpolate("${MISSING}", &env),
            Err(InterpolateError::Unset("MISSING".into()))
        );
        assert_eq!(
            interpolate("${OPEN", &env),
            Err(InterpolateError::Unterminated)
        );
        assert_eq!(
            interpolate("${}", &env),
            Err(InterpolateError::BadName(String::new()))
        );
        assert_eq!(
            interpolate("${A B}", &env),
            Err(InterpolateError::BadName("A B".into()))
        );
    }
}
