//! What the compiled rules keep for the API's catalogue: descriptions, kinds and windows as
//! written, and each segment's `emit` flag.

use tagstream_rules::rules::RuleSet;

const RULES: &str = r#"
[[tag]]
name = "spend_30d"
kind = "sum"
description = "money spent in the last 30 days"
event = "purchase"
property = "amount"
window = "4w"

[[tag]]
name = "tier"
kind = "tier"
of = "spend_30d"
tiers = [{ label = "high", min = 1000 }]

[[segment]]
name = "vip"
description = "spends a lot"
when = "tier = 'high'"

[[segment]]
name = "helper"
emit = false
when = "spend_30d > 0 AND last_seen > now() - 7d"
"#;

fn node<'r>(rules: &'r RuleSet, name: &str) -> &'r tagstream_rules::rules::Node {
    &rules.nodes[rules.node_by_name(name).expect(name)]
}

#[test]
fn descriptions_kinds_and_windows_are_kept_as_written() {
    let rules = RuleSet::compile(RULES, "rules.toml").unwrap();
    let spend = node(&rules, "spend_30d");
    assert_eq!(spend.description, "money spent in the last 30 days");
    assert_eq!(&*spend.kind_name, "sum");
    // The window as written, not its 28 day buckets.
    assert_eq!(spend.window_text.as_deref(), Some("4w"));
    let tier = node(&rules, "tier");
    assert_eq!(tier.description, "");
    assert_eq!(&*tier.kind_name, "tier");
    assert_eq!(tier.window_text, None);
    // `last_seen` is implicit: its kind is the aggregate it stands for.
    assert_eq!(&*node(&rules, "last_seen").kind_name, "last_time");
    assert_eq!(&*node(&rules, "vip").kind_name, "segment");
    assert_eq!(node(&rules, "vip").description, "spends a lot");
}

#[test]
fn emit_defaults_to_true_and_can_be_turned_off() {
    let rules = RuleSet::compile(RULES, "rules.toml").unwrap();
    let emit: Vec<(&str, bool)> = rules.segments.iter().map(|s| (&*s.name, s.emit)).collect();
    assert_eq!(emit, vec![("vip", true), ("helper", false)]);
    assert_eq!(rules.segments[0].description, "spends a lot");
}

#[test]
fn emit_must_be_a_boolean() {
    let src = RULES.replace("emit = false", "emit = \"no\"");
    let e = RuleSet::compile(&src, "rules.toml")
        .unwrap_err()
        .to_string();
    // Line 23 is the `emit = "no"` line.
    assert!(
        e.starts_with("rules.toml:23:") && e.contains("expected a boolean"),
        "{e}"
    );
}
