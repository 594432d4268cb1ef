//! Splicing the report into a markdown document between two markers,
//! leaving every other byte of the document as it was.
//!
//! # Contract
//! * With both markers present (begin before end, each once), the text
//!   between them is replaced by the body; the marker lines and everything
//!   outside stay byte for byte.
//! * With neither, a `## Side by side` section holding the markers and the
//!   body is appended at the end (after one blank line).
//! * Anything else (one marker alone, twice, or out of order) is an error:
//!   the document is not guessed at.
//! * Splicing is idempotent: splicing the same body again gives the same text.

/// Opening marker.
pub const BEGIN: &str = "<!-- compare:begin -->";
/// Closing marker.
pub const END: &str = "<!-- compare:end -->";
/// Heading of the section created when the markers are absent.
pub const HEADING: &str = "## Side by side";

/// Why a document could not be spliced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// The markers are not one begin followed by one end.
    #[error(
        "docs markers: found {begins} `{BEGIN}` and {ends} `{END}` (need one each, in that order)"
    )]
    Markers {
        /// Count of begin markers.
        begins: usize,
        /// Count of end markers.
        ends: usize,
    },
}

/// `doc` with `body` between the markers (see the module docs).
pub fn splice(doc: &str, body: &str) -> Result<String, SpliceError> {
    let body = body.trim_end_matches('\n');
    let begins = doc.matches(BEGIN).count();
    let ends = doc.matches(END).count();
    match (begins, ends) {
        (0, 0) => {
            let mut out = doc.trim_end_matches('\n').to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&format!("{HEADING}\n\n{BEGIN}\n{body}\n{END}\n"));
            Ok(out)
        }
        (1, 1) => {
            let b = doc.find(BEGIN).unwrap_or(0) + BEGIN.len();
            let e = doc.find(END).unwrap_or(0);
            if e < b {
                return Err(SpliceError::Markers { begins, ends });
            }
            Ok(format!("{}\n{body}\n{}", &doc[..b], &doc[e..]))
        }
        _ => Err(SpliceError::Markers { begins, ends }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nIntro.\n\n## Still to do\n\nThings.\n";

    #[test]
    fn appends_a_section_when_absent_then_replaces_in_place() {
        let once = splice(DOC, "| a |\n").expect("splices");
        assert!(once.starts_with(DOC), "the rest is untouched");
        assert_eq!(
            &once[DOC.len()..],
            "\n## Side by side\n\n<!-- compare:begin -->\n| a |\n<!-- compare:end -->\n"
        );
        // Idempotent.
        assert_eq!(splice(&once, "| a |").expect("again"), once);
        // New body, same surroundings.
        let twice = splice(&once, "| b |\n| c |").expect("replaces");
        assert_eq!(twice, once.replace("| a |", "| b |\n| c |"));
    }

    #[test]
    fn keeps_text_after_the_end_marker() {
        let doc = format!("top\n{BEGIN}\nold\nstuff\n{END}\n\nafter\n");
        let out = splice(&doc, "new").expect("splices");
        assert_eq!(out, format!("top\n{BEGIN}\nnew\n{END}\n\nafter\n"));
        assert_eq!(
            splice("", "x").expect("empty doc"),
            format!("{HEADING}\n\n{BEGIN}\nx\n{END}\n")
        );
    }

    #[test]
    fn refuses_broken_markers() {
        for doc in [
            format!("{BEGIN}\nx\n"),
            format!("{END}\nx\n{BEGIN}\n"),
            format!("{BEGIN}{BEGIN}{END}"),
        ] {
            assert!(splice(&doc, "y").is_err(), "{doc}");
        }
    }
}
