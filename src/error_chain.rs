//! An error and its causes as one line, each cause once.
//!
//! shardgate's error types put their cause in their own message (so a log line with `%e` says
//! what happened) and also return it as `source()` (so callers can inspect it). Printing the
//! whole chain the usual way (`{:#}`) would then repeat every cause; [`one_line`] leaves out a
//! cause whose text the line already holds.

use std::error::Error;

/// `err` and its causes joined with `": "`, a cause omitted when the message before it already
/// contains its text.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut last = line.clone();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
            last = text;
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file x.toml: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("loading the config")]
    struct Context(#[source] Repeats);

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Bare(#[source] std::io::Error);

    #[test]
    fn a_cause_repeated_by_its_wrapper_is_printed_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = Context(Repeats(io()));
        let line = one_line(&e);
        assert_eq!(line.matches(&io().to_string()).count(), 1, "{line}");
        assert!(line.starts_with("loading the config: cannot read config file x.toml: "));
        // A cause its wrapper does not repeat is still printed.
        let bare = one_line(&Bare(io()));
        assert_eq!(bare, format!("starting: {}", io()));
    }
}
