//! Small helpers over sonic-rs lazy values that keep borrows tied to the input frame.

use std::borrow::Cow;

use sonic_rs::{JsonType, JsonValueTrait, LazyValue};

use super::short_str::short_str;

/// The string value of `v`, borrowed from `input` when it has no escapes (the common case for
/// ids, types and model names), unescaped into an owned string otherwise.
pub(crate) fn str_in<'a>(input: &'a [u8], v: &LazyValue<'_>) -> Option<Cow<'a, str>> {
    if v.get_type() != JsonType::String {
        return None;
    }
    let raw = v.as_raw_str().as_bytes();
    if !raw.contains(&b'\\') {
        if let Some(inner) = subslice_of(input, raw) {
            let inner = &inner[1..inner.len() - 1];
            return short_str(inner).map(Cow::Borrowed);
        }
    }
    v.as_str().map(|s| Cow::Owned(s.to_owned()))
}

/// The part of `input` that `part` points into, if it does.
pub(crate) fn subslice_of<'a>(input: &'a [u8], part: &[u8]) -> Option<&'a [u8]> {
    let start = (part.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    input.get(start..end)
}

/// Byte range of `part` inside `input`.
pub(crate) fn range_of(input: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= input.len()).then_some(start..end)
}

/// `true` when `v` is JSON `null`.
pub(crate) fn is_null(v: &LazyValue<'_>) -> bool {
    v.get_type() == JsonType::Null
}
