//! The rules file exactly as written (TOML), with source spans for error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    pub time_zone: Option<Spanned<String>>,
    pub dedup_window: Option<Spanned<String>>,
    #[serde(default)]
    pub tag: Vec<Spanned<RawTag>>,
    #[serde(default)]
    pub segment: Vec<Spanned<RawSegment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTag {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub description: Option<String>,
    pub event: Option<Spanned<EventSelector>>,
    pub property: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
    #[serde(rename = "where")]
    pub filter: Option<Spanned<String>>,
    pub k: Option<Spanned<i64>>,
    pub expr: Option<Spanned<String>>,
    pub cases: Option<Spanned<Vec<Spanned<RawCase>>>>,
    #[serde(rename = "else")]
    pub otherwise: Option<Spanned<toml::Value>>,
    pub else_expr: Option<Spanned<String>>,
    pub of: Option<Spanned<String>>,
    pub tiers: Option<Spanned<Vec<Spanned<RawTier>>>>,
    pub features: Option<Spanned<Vec<Spanned<String>>>>,
    pub centroids: Option<Spanned<BTreeMap<String, Spanned<Vec<f64>>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EventSelector {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub when: Spanned<String>,
    pub value: Option<Spanned<toml::Value>>,
    pub value_expr: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub label: Spanned<String>,
    pub min: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub when: Spanned<String>,
    /// `false`: computed like any segment, but its transitions are not for the sink.
    pub emit: Option<bool>,
}
