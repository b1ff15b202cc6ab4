//! Human tables: a header row, columns padded to their widest cell,
//! two spaces apart; text from the API is shown as text, with control
//! characters replaced so an agent-chosen path cannot move the cursor.

/// Renders `rows` under `header`; an empty list says so.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let clean: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &clean {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    line(&mut out, header.iter().map(|h| (*h).to_owned()), &widths);
    for row in clean {
        line(&mut out, row.into_iter(), &widths);
    }
    out
}

fn line(out: &mut String, cells: impl Iterator<Item = String>, widths: &[usize]) {
    let cells: Vec<String> = cells.collect();
    let last = cells.len().saturating_sub(1);
    for (i, cell) in cells.iter().enumerate() {
        out.push_str(cell);
        if i < last {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad + 2));
        }
    }
    out.push('\n');
}

/// Control characters (escape sequences, line breaks) as `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_and_cleans_cells() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "\x1b[31mred".to_owned(), "y".to_owned()],
        ];
        let text = render(&["N", "V", "Z"], &rows, "none");
        assert_eq!(
            text,
            "N     V           Z\na     long value  x\nbbbb  ?[31mred    y\n"
        );
        assert_eq!(render(&["N"], &[], "no services"), "no services\n");
    }
}
