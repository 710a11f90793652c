//! Tables the way the cf CLI draws them: no borders, every column padded to its widest cell
//! plus three spaces, the last column not padded.

use comfy_table::{ContentArrangement, Table, presets};

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row.clone());
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 3 }));
    }
    let mut out = String::new();
    for line in table.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_cf_layout() {
        let rows = vec![vec![
            "frontend".to_string(),
            "backend".into(),
            "tcp".into(),
            "8080-8090".into(),
            "my-space".into(),
            "my-org".into(),
        ]];
        let got =
            render(&["source", "destination", "protocol", "ports", "destination space", "destination org"], &rows);
        assert_eq!(
            got,
            "source     destination   protocol   ports       destination space   destination org\n\
             frontend   backend       tcp        8080-8090   my-space            my-org\n"
        );
    }

    #[test]
    fn header_alone_when_empty() {
        assert_eq!(render(&["a", "bb"], &[]), "a   bb\n");
    }
}
