//! Tables as kubectl prints them, measured in terminal columns (comfy-table).

use serde_json::Value;

/// A cell of a table: strings as they are, numbers and booleans printed, lists
/// comma-joined, absent or empty as "-".
pub(super) fn cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .filter(|s| s != "-")
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    };
    if text.is_empty() {
        "-".to_string()
    } else {
        sanitize(&text)
    }
}

/// Names come from whoever created the object; control characters would break the table or
/// drive the terminal.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Rows (and a header) in aligned columns, two spaces apart, with no borders, as kubectl
/// prints them; one line each, trailing spaces trimmed. comfy-table measures cells in terminal
/// columns, so names in Chinese (two columns a character) keep the columns straight.
pub(super) fn aligned_lines(headers: Option<&[&str]>, rows: &[Vec<String>]) -> Vec<String> {
    let mut grid = comfy_table::Table::new();
    grid.load_style(comfy_table::TableStyle::new());
    if let Some(headers) = headers {
        grid.set_header(headers.to_vec());
    }
    grid.add_rows(rows.iter().cloned());
    for column in grid.column_iter_mut() {
        column.set_padding((0, 2));
    }
    grid.lines().map(|l| l.trim_end().to_string()).collect()
}

pub(super) fn indented(indent: &str, lines: &[String]) -> String {
    lines.iter().map(|l| format!("{indent}{l}\n")).collect()
}

pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    indented("", &aligned_lines(Some(headers), rows))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::cli::targets::render as render_targets;
    /// The seeds' own examples name objects in Chinese: each of those characters takes two
    /// terminal columns, and the columns after the name must still line up.
    #[test]
    fn wide_characters_keep_columns_aligned() {
        let items = [
            json!({"TrafficMirrorTargetId": "tmt-1", "TrafficMirrorTargetName": "流量镜像目标", "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-2", "TrafficMirrorTargetName": "ids", "Status": "Available"}),
        ];
        // "流量镜像目标" is 6 characters and 12 columns wide.
        let expected = "\
ID     NAME          TYPE  INSTANCE  DESTINATION  STATUS
tmt-1  流量镜像目标  -     -         -            Available
tmt-2  ids           -     -         -            Available
";
        assert_eq!(render_targets(&items), expected);
    }
}
