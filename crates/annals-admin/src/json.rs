//! JSON text laid out again without being parsed into values: numbers, key order and
//! repeated keys stay exactly as stored (a parse into `serde_json::Value` would round a
//! large integer or a long decimal to a float, and sort the keys). The text must be JSON.

/// Calls `each` with every character outside strings that is not whitespace, and every
/// character of strings, saying whether it is inside a string.
fn tokens(json: &str, mut each: impl FnMut(char, bool)) {
    let (mut quoted, mut escaped) = (false, false);
    for c in json.chars() {
        match (quoted, c) {
            (true, _) => {
                each(c, true);
                quoted = escaped || c != '"';
                escaped = !escaped && c == '\\';
            }
            (false, ' ' | '\t' | '\n' | '\r') => {}
            (false, '"') => {
                quoted = true;
                each(c, true);
            }
            _ => each(c, false),
        }
    }
}

/// The JSON text on one line, without the whitespace between its tokens.
pub fn one_line(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    tokens(json, |c, _| out.push(c));
    out
}

/// The JSON text indented by two spaces per level, one member or element per line (as
/// `serde_json::to_string_pretty` lays it out), its tokens unchanged.
pub fn pretty(json: &str) -> String {
    pretty_within(json, usize::MAX).unwrap_or_default()
}

/// [`pretty`], unless the layout would take more than `limit` bytes (deep nesting repeats
/// its indentation on every line: a small body can lay out to a very large one).
pub fn pretty_within(json: &str, limit: usize) -> Option<String> {
    let mut marks = Vec::with_capacity(json.len());
    tokens(json, |c, quoted| marks.push((c, quoted)));
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut marks = marks.into_iter().peekable();
    while let Some((c, quoted)) = marks.next() {
        match (quoted, c) {
            (true, _) => out.push(c),
            (false, '{' | '[') => {
                out.push(c);
                match marks.peek() {
                    // An empty object or array stays `{}` / `[]`.
                    Some(&(close @ ('}' | ']'), false)) => {
                        out.push(close);
                        marks.next();
                    }
                    _ => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            (false, '}' | ']') => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            (false, ',') => {
                out.push(c);
                newline(&mut out, depth);
            }
            (false, ':') => out.push_str(": "),
            _ => out.push(c),
        }
        if out.len() > limit {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_key_order_are_kept() {
        let stored = "{ \"z\" : 123456789012345678901234567890,\n \"a\": [0.10000000000000000000001, -0, 1E400],\"z\":{}}";
        assert_eq!(
            one_line(stored),
            r#"{"z":123456789012345678901234567890,"a":[0.10000000000000000000001,-0,1E400],"z":{}}"#
        );
        assert_eq!(
            pretty(stored),
            "{\n  \"z\": 123456789012345678901234567890,\n  \"a\": [\n    0.10000000000000000000001,\n    -0,\n    1E400\n  ],\n  \"z\": {}\n}"
        );
    }

    #[test]
    fn a_layout_past_its_limit_is_given_up() {
        let deep = format!(
            "{}{}{}",
            "[".repeat(100),
            "0,".repeat(10_000) + "0",
            "]".repeat(100)
        );
        assert_eq!(pretty_within(&deep, 1 << 20), None);
        assert!(pretty(&deep).len() > 2_000_000);
        let small = r#"{"a":[1,2]}"#;
        assert_eq!(
            pretty_within(small, 64).as_deref(),
            Some(pretty(small).as_str())
        );
    }

    #[test]
    fn strings_are_left_alone() {
        let stored = r#"{"a b":"x , { [ \" : \\","c":["  ",[]]}"#;
        assert_eq!(one_line(stored), stored);
        assert_eq!(
            pretty(stored),
            "{\n  \"a b\": \"x , { [ \\\" : \\\\\",\n  \"c\": [\n    \"  \",\n    []\n  ]\n}"
        );
        // The layout is serde_json's wherever serde_json keeps the values.
        let plain = r#"{"k":[1,{"n":null,"t":true}],"s":"é"}"#;
        let value: serde_json::Value = serde_json::from_str(plain).unwrap();
        assert_eq!(pretty(plain), serde_json::to_string_pretty(&value).unwrap());
        assert_eq!(pretty("\"just text\""), "\"just text\"");
        assert_eq!(pretty(" 42 "), "42");
    }

    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any JSON serde_json writes (strings with quotes, backslashes, escapes and any
        /// character among them) is laid out as serde_json lays it out, and back.
        #[test]
        fn layouts_agree_with_serde_json(v in value()) {
            let compact = serde_json::to_string(&v).unwrap();
            let laid_out = pretty(&compact);
            proptest::prop_assert_eq!(&laid_out, &serde_json::to_string_pretty(&v).unwrap());
            proptest::prop_assert_eq!(one_line(&laid_out), compact);
        }
    }
}
