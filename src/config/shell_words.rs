//! Splitting `FERRICORN_CMD_ARGS` / `GUNICORN_CMD_ARGS` into words the way a POSIX shell would
//! (gunicorn uses Python's `shlex.split`), so quoted values with spaces survive.

use std::fmt;

/// Why a string could not be split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// The quote character that was never closed.
    UnterminatedQuote(char),
    /// A backslash as the very last character escapes nothing.
    TrailingBackslash,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::UnterminatedQuote(q) => write!(f, "no closing {q} quote"),
            SplitError::TrailingBackslash => f.write_str("backslash at the end escapes nothing"),
        }
    }
}

impl std::error::Error for SplitError {}

/// Split on unquoted whitespace. Single quotes keep everything literally; double quotes keep
/// everything but let a backslash escape `\`, `"`, `$` and `` ` ``; outside quotes a backslash makes
/// the next character literal. Quoted pieces join the word they touch, and `''` is an empty word.
pub fn split(s: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Tracks whether a word has started even if it is still empty (`''` is a real, empty argument).
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('\\' | '"' | '$' | '`')) => word.push(e),
                            // A backslash-newline is a line continuation.
                            Some('\n') => {}
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(SplitError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => {
                    in_word = true;
                    word.push(e);
                }
                None => return Err(SplitError::TrailingBackslash),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> Vec<String> {
        match split(s) {
            Ok(w) => w,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    #[test]
    fn plain_words() {
        assert_eq!(sp("  -w 3\t--bind\n:9000 "), ["-w", "3", "--bind", ":9000"]);
        assert!(sp("").is_empty());
        assert!(sp("   ").is_empty());
    }

    #[test]
    fn quotes() {
        assert_eq!(
            sp(r#"--access-logformat '%(h)s "%(r)s"' -n "my app""#),
            ["--access-logformat", r#"%(h)s "%(r)s""#, "-n", "my app"]
        );
        assert_eq!(sp(r#"a'b c'"d e"f"#), ["ab cd ef"]);
        assert_eq!(sp("'' x \"\""), ["", "x", ""]);
        assert_eq!(sp(r#""a\"b\\c\$d\n""#), [r#"a"b\c$d\n"#]);
        assert_eq!(sp(r"'a\b'"), [r"a\b"]);
    }

    #[test]
    fn backslashes() {
        assert_eq!(sp(r"a\ b c"), ["a b", "c"]);
        assert_eq!(sp("a\\\nb"), ["ab"]);
        assert_eq!(sp(r"\'"), ["'"]);
    }

    #[test]
    fn errors() {
        assert_eq!(split("'abc"), Err(SplitError::UnterminatedQuote('\'')));
        assert_eq!(split("\"abc"), Err(SplitError::UnterminatedQuote('"')));
        assert_eq!(split("\"abc\\"), Err(SplitError::UnterminatedQuote('"')));
        assert_eq!(split("abc\\"), Err(SplitError::TrailingBackslash));
    }
}
