//! Variables as shell code that sets them, quoted so any value (spaces,
//! quotes, `$`, backslashes) arrives byte for byte: `eval "$(clavis env)"`,
//! `clavis env --shell fish | source`, `clavis env --shell pwsh | iex`.

use super::args::Shell;

/// One line per variable, in the given order.
pub(crate) fn render(shell: Shell, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in vars {
        match shell {
            Shell::Sh => {
                out.push_str("export ");
                out.push_str(name);
                out.push('=');
                out.push_str(&sh_quote(value));
            }
            Shell::Fish => {
                out.push_str("set -gx ");
                out.push_str(name);
                out.push(' ');
                out.push_str(&fish_quote(value));
            }
            Shell::Pwsh => {
                out.push_str("$env:");
                out.push_str(name);
                out.push_str(" = ");
                out.push_str(&pwsh_quote(value));
            }
        }
        out.push('\n');
    }
    out
}

/// POSIX single quotes: nothing inside is special; a `'` is closed,
/// escaped and reopened.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// fish single quotes: only `\'` and `\\` are escapes inside.
fn fish_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

/// PowerShell single-quoted (verbatim) strings: `'` doubles. PowerShell
/// also takes the typographic quotes U+2018–U+201B as `'`, so they double too.
fn pwsh_quote(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(shell: Shell, value: &str) -> String {
        render(shell, &[("V".into(), value.into())])
    }

    #[test]
    fn sh_quotes_everything() {
        assert_eq!(one(Shell::Sh, "a b"), "export V='a b'\n");
        assert_eq!(
            one(Shell::Sh, "it's $HOME `x` \\n"),
            "export V='it'\\''s $HOME `x` \\n'\n"
        );
    }

    #[test]
    fn fish_escapes_backslash_and_quote() {
        assert_eq!(one(Shell::Fish, r"a\b'c $x"), "set -gx V 'a\\\\b\\'c $x'\n");
    }

    #[test]
    fn pwsh_doubles_quotes() {
        assert_eq!(one(Shell::Pwsh, "it's $env:X"), "$env:V = 'it''s $env:X'\n");
        assert_eq!(
            one(Shell::Pwsh, "a\u{2019}b"),
            "$env:V = 'a\u{2019}\u{2019}b'\n"
        );
    }
}
