//! `tagstream check`: every problem is reported with rule, line, column and what to do.

use tagstream_rules::rules::RuleSet;

fn errors(src: &str) -> Vec<String> {
    match RuleSet::compile(src, "rules.toml") {
        Ok(_) => vec![],
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

fn assert_error(src: &str, needle: &str, line: usize) {
    let errs = errors(src);
    assert!(
        errs.iter()
            .any(|e| e.contains(needle) && e.starts_with(&format!("rules.toml:{line}:"))),
        "expected {needle:?} on line {line}, got {errs:#?}"
    );
}

#[test]
fn unknown_names_suggest_the_closest() {
    let src = "[[tag]]\nname = \"spend\"\nkind = \"sum\"\nevent = \"purchase\"\nproperty = \"amount\"\n[[segment]]\nname = \"vip\"\nwhen = \"spnd > 10\"\n";
    assert_error(src, "unknown name \"spnd\"", 8);
    assert_error(src, "did you mean \"spend\"", 8);
    assert!(errors(src)[0].contains("segment 'vip'"));
}

#[test]
fn type_errors() {
    let src = "[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"n = 'x'\"\n";
    assert_error(src, "cannot compare a number with a string", 7);
    let src = "[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"n + 1\"\n";
    assert_error(src, "must be a condition", 7);
}

#[test]
fn cycles_are_reported_with_the_path() {
    let src = "[[tag]]\nname = \"a\"\nkind = \"expr\"\nexpr = \"b + 1\"\n[[tag]]\nname = \"b\"\nkind = \"expr\"\nexpr = \"a + 1\"\n";
    let errs = errors(src);
    assert!(
        errs.iter().any(|e| e.contains("cycle between rules")
            && (e.contains("a -> b -> a") || e.contains("b -> a -> b"))),
        "{errs:#?}"
    );
}

#[test]
fn windows_only_where_allowed_and_well_formed() {
    let src = "[[tag]]\nname = \"f\"\nkind = \"first\"\nevent = \"e\"\nproperty = \"p\"\nwindow = \"7d\"\n";
    assert_error(src, "`window` does not apply to kind \"first\"", 6);
    let src = "[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\nwindow = \"7y\"\n";
    assert_error(src, "invalid window unit", 5);
}

#[test]
fn bad_durations_zones_and_syntax() {
    assert_error("time_zone = \"Mars/Olympus\"\n", "unknown time zone", 1);
    assert_error("dedup_window = \"7 days\"\n", "dedup_window", 1);
    let src = "[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"c > 7x\"\n";
    assert_error(src, "syntax error", 7);
}

#[test]
fn where_sees_only_the_event() {
    let src = "[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\nwhere = \"now() > 5\"\n";
    assert_error(src, "cannot be used in a `where` filter", 5);
    let src = "[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\n[[tag]]\nname = \"d\"\nkind = \"count\"\nevent = \"e\"\nwhere = \"c > 1\"\n";
    assert_error(src, "sees only the event", 9);
}

#[test]
fn unknown_keys_kinds_and_duplicates() {
    assert_error(
        "[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\nwindw = \"7d\"\n",
        "unknown field",
        5,
    );
    assert_error(
        "[[tag]]\nname = \"c\"\nkind = \"median\"\nevent = \"e\"\n",
        "unknown kind",
        3,
    );
    assert_error("[[tag]]\nname = \"c\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"c\"\nwhen = \"TRUE\"\n", "already used on line 2", 6);
    assert_error(
        "[[tag]]\nname = \"sum\"\nkind = \"count\"\n",
        "needs `event`",
        2,
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let src = "[[tag]]\nname = \"a\"\nkind = \"sum\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"zz > 1\"\n";
    let errs = errors(src);
    assert!(errs.len() >= 2, "{errs:#?}");
}

/// SPEC §4 rev 2: no rule is refused for how it depends on time.
#[test]
fn every_time_shape_is_accepted() {
    let tags = r#"
[[tag]]
name = "l"
kind = "last_time"
event = "e"
[[tag]]
name = "n"
kind = "count"
event = "e"
[[tag]]
name = "recency"
kind = "expr"
expr = "days_since(l)"
[[tag]]
name = "cluster"
kind = "nearest"
features = ["n", "recency"]
centroids = { fresh = [5, 1], lapsed = [1, 30] }
[[tag]]
name = "band"
kind = "tier"
of = "abs((now() - l) / 1d - 10)"
tiers = [{ label = "near", min = 0 }, { label = "far", min = 3 }]
"#;
    for when in [
        "abs(now() - l) > 1d",
        "(now() - l) % 7d < 1d",
        "least(now() - l, 30d - (now() - l)) > 2d",
        "((now() - l) / 1d) * ((now() - l) / 1d - 20) < 0",
        "cluster = 'fresh' AND NOT n > 10",
        "band = 'near'",
        "ln(days_since(l) - 3) IS NULL",
        "hour_of_day(now() - (now() - l) * 2) = 3",
    ] {
        let src = format!("{tags}[[segment]]\nname = \"s\"\nwhen = {when:?}\n");
        let errs = errors(&src);
        assert!(errs.is_empty(), "{when}: {errs:#?}");
    }
}

#[test]
fn example_rules_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            RuleSet::compile(&src, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no example rules found in {}", dir.display());
}
