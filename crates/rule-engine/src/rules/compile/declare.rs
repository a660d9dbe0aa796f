//! Declaration and ordering: every tag and segment named once, ordered so that each is
//! compiled after what it reads; unknown names get the closest suggestion.

use super::*;

impl Compiler<'_> {
    /// Collects declarations, checking names and duplicates, and reads their dependencies.
    pub(super) fn declare<'r>(&mut self, raw: &'r RawRules) -> Vec<Decl<'r>> {
        let mut decls: Vec<Decl<'r>> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let sources = raw
            .tag
            .iter()
            .map(|t| (&t.get_ref().name, DeclSource::Tag(t.get_ref())))
            .chain(
                raw.segment
                    .iter()
                    .map(|s| (&s.get_ref().name, DeclSource::Segment(s.get_ref()))),
            );
        for (name, source) in sources {
            self.rule = format!("{} '{}'", source.what(), name.get_ref());
            let text = name.get_ref().clone();
            if !is_identifier(&text) {
                self.error_span(name, format!("{text:?} is not a valid name; use letters, digits and underscores, starting with a letter or underscore"));
                continue;
            }
            if RESERVED.contains(&text.to_ascii_lowercase().as_str()) {
                self.error_span(name, format!("{text:?} is a reserved word of the expression language; choose another name"));
                continue;
            }
            if let Some(&first) = seen.get(&text) {
                let (line, _) = self.lines.position(first);
                self.error_span(name, format!("the name {text:?} is already used on line {line}; tag and segment names must be unique"));
                continue;
            }
            seen.insert(text.clone(), name.span().start);
            decls.push(Decl {
                name: text,
                name_offset: name.span().start,
                source,
                deps: Vec::new(),
            });
        }
        decls
    }

    /// Fills in dependencies and adds implicit `first_seen`/`last_seen` where they are read.
    pub(super) fn order(&mut self, decls: &mut Vec<Decl<'_>>) {
        let mut referenced: Vec<Vec<String>> = Vec::new();
        for d in decls.iter() {
            let mut names = Vec::new();
            for text in rule_expressions(&d.source) {
                if let Ok(e) = expr::parse(text) {
                    collect_idents(&e, &mut names);
                }
            }
            if let DeclSource::Tag(t) = d.source {
                if let Some(features) = &t.features {
                    names.extend(features.get_ref().iter().map(|f| f.get_ref().clone()));
                }
            }
            referenced.push(names);
        }
        let declared: HashSet<String> = decls.iter().map(|d| d.name.clone()).collect();
        for (implicit, kind) in [
            ("first_seen", AggKind::FirstTime),
            ("last_seen", AggKind::LastTime),
        ] {
            if !declared.contains(implicit) && referenced.iter().flatten().any(|n| n == implicit) {
                decls.push(Decl {
                    name: implicit.into(),
                    name_offset: 0,
                    source: DeclSource::Implicit(kind),
                    deps: Vec::new(),
                });
            }
        }
        let declared: HashSet<String> = decls.iter().map(|d| d.name.clone()).collect();
        for (d, names) in decls.iter_mut().zip(referenced) {
            let mut deps: Vec<String> =
                names.into_iter().filter(|n| declared.contains(n)).collect();
            deps.dedup();
            d.deps = deps;
        }
    }

    /// Depth-first order in which every declaration follows what it reads; reports cycles.
    pub(super) fn topological_order(&mut self, decls: &[Decl<'_>]) -> Vec<usize> {
        let index: HashMap<&str, usize> = decls
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; decls.len()];
        let mut order = Vec::with_capacity(decls.len());
        let mut stack: Vec<usize> = Vec::new();
        fn visit(
            c: &mut Compiler<'_>,
            i: usize,
            decls: &[Decl<'_>],
            index: &HashMap<&str, usize>,
            state: &mut [u8],
            stack: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) {
            state[i] = 1;
            stack.push(i);
            for dep in &decls[i].deps {
                let j = index[dep.as_str()];
                match state[j] {
                    0 => visit(c, j, decls, index, state, stack, order),
                    1 => {
                        let from = stack.iter().position(|&s| s == j).unwrap_or(0);
                        let mut path: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&s| decls[s].name.as_str())
                            .collect();
                        path.push(decls[j].name.as_str());
                        c.rule = format!("{} '{}'", decls[i].source.what(), decls[i].name);
                        let message = format!("cycle between rules: {}; a tag or segment cannot depend on itself, directly or through others", path.join(" -> "));
                        c.error_at(decls[i].name_offset, message);
                    }
                    _ => {}
                }
            }
            stack.pop();
            state[i] = 2;
            order.push(i);
        }
        for i in 0..decls.len() {
            if state[i] == 0 {
                visit(self, i, decls, &index, &mut state, &mut stack, &mut order);
            }
        }
        order
    }

    pub(super) fn suggest(&self, name: &str) -> String {
        let best = self
            .ids
            .keys()
            .map(|k| (edit_distance(k, name), k))
            .filter(|(d, _)| *d <= 2)
            .min();
        match best {
            Some((_, k)) => format!("; did you mean {k:?}?"),
            None => String::new(),
        }
    }
}

/// Every expression text of a declaration whose names count as dependencies.
pub(super) fn rule_expressions<'r>(source: &DeclSource<'r>) -> Vec<&'r str> {
    let mut out = Vec::new();
    match source {
        DeclSource::Segment(s) => out.push(s.when.get_ref().as_str()),
        DeclSource::Tag(t) => {
            for e in [&t.expr, &t.else_expr, &t.of].into_iter().flatten() {
                out.push(e.get_ref().as_str());
            }
            if let Some(cases) = &t.cases {
                for c in cases.get_ref() {
                    out.push(c.get_ref().when.get_ref().as_str());
                    if let Some(v) = &c.get_ref().value_expr {
                        out.push(v.get_ref().as_str());
                    }
                }
            }
        }
        DeclSource::Implicit(_) => {}
    }
    out
}

pub(super) fn collect_idents(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Ident(n) if !out.contains(n) => out.push(n.clone()),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| collect_idents(a, out)),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => collect_idents(expr, out),
        ExprKind::Binary { left, right, .. } => {
            collect_idents(left, out);
            collect_idents(right, out);
        }
        ExprKind::In { expr, list, .. } => {
            collect_idents(expr, out);
            list.iter().for_each(|a| collect_idents(a, out));
        }
        ExprKind::Between {
            expr, low, high, ..
        } => {
            collect_idents(expr, out);
            collect_idents(low, out);
            collect_idents(high, out);
        }
        _ => {}
    }
}

pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}
