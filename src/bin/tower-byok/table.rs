//! Plain aligned text tables.
//!
//! Kept by hand rather than comfy-table or tabled: the tool prints left-aligned columns
//! two spaces apart, no borders, and its cells are ASCII by construction (provider names,
//! key ids, actors, hex fingerprints and user refs are validated to ASCII; times are RFC
//! 3339) but for masked hints, where counting chars is right for all but double-width
//! characters. 25 lines do that; either crate would bring unicode-width tables, styling
//! and (comfy-table's default) a terminal library for output no test could tell apart.

/// Prints a header and rows as left-aligned columns, two spaces apart.
pub(crate) fn print(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}
