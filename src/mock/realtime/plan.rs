//! The `[[rt:…]]` directives a client event carries, read into what the next response does.

/// What a response is scripted to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) usage: bool,
    pub(super) tool: Option<String>,
    pub(super) chunks: usize,
    pub(super) audio_ms: u64,
    pub(super) delay_ms: u64,
    pub(super) close: Option<u16>,
    pub(super) drop: bool,
    pub(super) error: Option<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            usage: true,
            tool: None,
            chunks: 4,
            audio_ms: 100,
            delay_ms: 0,
            close: None,
            drop: false,
            error: None,
        }
    }
}

impl Plan {
    /// Applies every `[[rt:…]]` directive in `text`.
    pub(super) fn apply(&mut self, text: &str) {
        let mut rest = text;
        while let Some(at) = rest.find("[[rt:") {
            let after = &rest[at + 5..];
            let Some(end) = after.find("]]") else {
                return;
            };
            for d in after[..end].split(',') {
                let (k, v) = d.split_once('=').unwrap_or((d, ""));
                let num = |v: &str| v.trim().parse::<u64>().ok();
                match k.trim() {
                    "no_usage" => self.usage = false,
                    "tool" => self.tool = Some(v.trim().to_string()),
                    "chunks" => self.chunks = num(v).unwrap_or(4) as usize,
                    "audio_ms" => self.audio_ms = num(v).unwrap_or(100),
                    "delay_ms" => self.delay_ms = num(v).unwrap_or(0),
                    "close" => self.close = num(v).and_then(|c| u16::try_from(c).ok()),
                    "drop" => self.drop = true,
                    "error" => self.error = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            rest = &after[end + 2..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_shape_the_next_response() {
        let mut plan = Plan::default();
        plan.apply("say [[rt:no_usage,chunks=7]] and [[rt:tool=get_weather, close=1011]]");
        assert_eq!(
            plan,
            Plan {
                usage: false,
                tool: Some("get_weather".into()),
                chunks: 7,
                close: Some(1011),
                ..Plan::default()
            }
        );
    }
}
