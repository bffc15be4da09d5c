//! SQL text pg-migrate writes itself: identifiers and literals quoted as
//! PostgreSQL reads them (with `standard_conforming_strings`, the default
//! of every supported major). Everything else goes to the server as
//! parameters.

/// An identifier, always double-quoted (as `pg_dump --quote-all-identifiers`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_double_what_they_quote_with() {
        assert_eq!(quote_ident("odd \"name\""), "\"odd \"\"name\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
