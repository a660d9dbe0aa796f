//! The web console (`GET /ui`) in a real headless Chromium, driven over the W3C WebDriver
//! protocol (Debian's `chromium` and `chromedriver`, which `scripts/ensure-deps.sh --test`
//! installs), against the real binary loaded with generated events. What the page shows is
//! compared with the API's own answers fetched with ureq and with `tagstream dump`.
//!
//! With `TAGSTREAM_CONSOLE_SCREENSHOTS=<dir>` set (relative to the repository root), the test
//! saves a PNG of each page there; docs/console/ holds the committed ones.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fetch_metrics, metric_sum, repo_root, spawn_run};
use serde_json::{json, Value};

const TOKEN: &str = "console-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Polls are bounded by a number of tries (100 ms apart), never by a wall-clock limit.
const TRIES: usize = 1200;
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..TRIES {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

/// `tagstream run` on a generated stream, with a token.
struct Service {
    child: Child,
    log: PathBuf,
    base: String,
}

impl Service {
    fn start(dir: &Path) -> Service {
        let log = dir.join("log.txt");
        let child = spawn_run(&dir.join("tagstream.toml"), &log);
        let addr = poll("the api to listen", || common::api_address(&log));
        Service {
            child,
            log,
            base: format!("http://{addr}"),
        }
    }

    /// (status, JSON) of a `/v1` request with the token.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let req = ureq::request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    fn segments(&self) -> Vec<Value> {
        self.get("/v1/segments")["segments"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", common::tail(&self.log, 40));
        }
    }
}

/// A headless Chromium behind chromedriver, spoken to with ureq.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    shots: Option<PathBuf>,
    downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/ensure-deps.sh --test"
        );
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        poll("chromedriver to be ready", || {
            let status: Value = ureq::get(&format!("{url}/status"))
                .call()
                .ok()?
                .into_json()
                .ok()?;
            status["value"]["ready"].as_bool().filter(|r| *r)
        });
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args, "prefs": {
                "download.default_directory": downloads.path(),
                "download.prompt_for_download": false,
            }}
        }}});
        let session: Value = ureq::post(&format!("{url}/session"))
            .send_string(&caps.to_string())
            .unwrap_or_else(|e| panic!("a WebDriver session: {e}"))
            .into_json()
            .unwrap();
        let session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_string();
        let shots = std::env::var_os("TAGSTREAM_CONSOLE_SCREENSHOTS").map(|d| {
            let dir = repo_root().join(d);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        });
        Browser {
            driver,
            url,
            session,
            shots,
            downloads,
            _profile: profile,
        }
    }

    /// A WebDriver command; its `value`.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let req = ureq::request(method, &url);
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                panic!(
                    "WebDriver {method} {path}: {status} {}",
                    r.into_string().unwrap()
                )
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        let v: Value = response.into_json().unwrap();
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until it returns something other than null or false.
    fn wait(&self, what: &str, script: &str) -> Value {
        poll(what, || {
            let v = self.js(script);
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element, as keystrokes (what a user does).
    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn clear(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
    }

    fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    fn screenshot(&self, name: &str) {
        let Some(dir) = &self.shots else { return };
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// The page does not scroll sideways, every form control has a label, and no value shows as
    /// `[object …]`, `undefined` or `NaN`.
    fn check_layout(&self, page: &str) {
        let v = self.js(
            "const unlabelled = [...document.querySelectorAll('main input, main textarea, main select, dialog[open] input')]\
               .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id || e.outerHTML);\
             return {overflow: document.documentElement.scrollWidth - window.innerWidth, unlabelled, \
                     garbled: ['[object ', 'undefined', 'NaN'].filter(w => document.body.innerText.includes(w))};",
        );
        assert!(
            v["overflow"].as_i64().unwrap() <= 0,
            "{page}: the page is wider than the window: {v}"
        );
        assert_eq!(v["unlabelled"], json!([]), "{page}: inputs without a label");
        assert_eq!(
            v["garbled"],
            json!([]),
            "{page}: a value rendered as JavaScript's text"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.url, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=' && *c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn rules_source() -> String {
    std::fs::read_to_string(repo_root().join("config/rules/ecommerce.toml")).unwrap()
}

fn setup(dir: &Path) -> usize {
    common::write_file_service(dir, 6000, &rules_source(), TOKEN)
}

/// A live, read-only dump of the running service's state, by user id.
fn dump(dir: &Path) -> BTreeMap<String, Value> {
    common::dump(&dir.join("state"))
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["user_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn members_of(dump: &BTreeMap<String, Value>, segment: &str) -> usize {
    dump.values()
        .filter(|v| v["segments"].as_array().unwrap().contains(&json!(segment)))
        .count()
}

/// Waits until every event is applied and the timers due at the end have fired: the live
/// sizes equal those the dump evaluates, so every later answer is stable.
fn loaded(service: &Service, dir: &Path, lines: usize) {
    poll("every event to be consumed", || {
        let m = fetch_metrics(&service.base);
        (metric_sum(&m, "tagstream_events_total") as usize == lines).then_some(())
    });
    poll("the last timers to fire", || {
        let live = dump(dir);
        service
            .segments()
            .iter()
            .all(|s| {
                s["size"].as_u64() == Some(members_of(&live, s["name"].as_str().unwrap()) as u64)
            })
            .then_some(())
    });
}

/// The ecommerce rules with a thresholds changed and two segments added (a real dry run has
/// enters and exits to show).
fn new_rules() -> String {
    let text = rules_source()
        .replace("last_seen > now() - 2d\"", "last_seen > now() - 5d\"")
        .replace("spend_30d >= 500\"", "spend_30d >= 800\"");
    assert_ne!(
        text,
        rules_source(),
        "the ecommerce rules changed: update new_rules"
    );
    format!("{text}\n[[segment]]\nname = \"repeat_buyer\"\nwhen = \"orders_90d >= 2\"\n")
}

#[test]
fn the_console_shows_what_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = setup(dir);
    let service = Service::start(dir);
    loaded(&service, dir, lines);
    let ui = format!("{}/ui", service.base);

    // The page and its assets are served from the binary, without the token, and reach for
    // nothing outside this server.
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/console.js", "text/javascript"),
        ("/ui/console.css", "text/css"),
    ] {
        let r = ureq::get(&format!("{}{path}", service.base))
            .call()
            .unwrap();
        assert!(
            r.content_type().starts_with(kind),
            "{path}: {}",
            r.content_type()
        );
        assert!(r
            .header("Content-Security-Policy")
            .unwrap()
            .contains("default-src 'none'"));
        let body = r.into_string().unwrap();
        let external = body
            .replace("http://www.w3.org/2000/svg", "")
            .contains("://");
        assert!(!external, "{path} refers to another server");
    }

    let browser = Browser::start();

    // Auth: the console asks for the token; a wrong one shows the 401 message.
    browser.goto(&format!("{ui}#/segments"));
    browser.wait(
        "the token dialog",
        "return document.getElementById('token-dialog').open",
    );
    browser.check_layout("token dialog");
    browser.screenshot("token");
    browser.type_into("#token-input", "wrong-token");
    browser.click("#token-submit");
    let refused = browser.wait(
        "the 401 message",
        "const e = document.getElementById('token-error'); \
         return document.getElementById('token-dialog').open && !e.hidden && e.textContent",
    );
    let refused = refused.as_str().unwrap();
    assert!(
        refused.contains("401") && refused.contains("bearer token"),
        "{refused}"
    );
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-submit");

    // Segments: every segment, with the size the API reports.
    let api_segments = service.segments();
    let rows = browser.wait(
        "the segment list with its trends",
        &format!(
            "const rows = [...document.querySelectorAll('#segments-table tbody tr')]; \
             if (rows.length !== {n} || document.querySelectorAll('#segments-table td.trend svg').length !== {n}) return null; \
             return rows.map(r => [r.dataset.segment, Number(r.querySelector('td.size').dataset.value), r.querySelector('td.size').textContent]);",
            n = api_segments.len()
        ),
    );
    let expected: Vec<Value> = api_segments
        .iter()
        .map(|s| json!([s["name"], s["size"]]))
        .collect();
    let shown: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r[0], r[1]]))
        .collect();
    assert_eq!(shown, expected);
    assert!(browser
        .js("return document.getElementById('zone').textContent")
        .as_str()
        .unwrap()
        .contains("Asia/Shanghai"));
    browser.check_layout("segments");
    browser.screenshot("segments");

    // A segment's page: its size, rule, chart and first page of members.
    let biggest = api_segments
        .iter()
        .max_by_key(|s| s["size"].as_u64())
        .unwrap();
    let name = biggest["name"].as_str().unwrap();
    browser.goto(&format!("{ui}#/segments/{name}"));
    let page = browser.wait(
        "the segment page",
        "const members = [...document.querySelectorAll('#segment-members a')].map(a => a.textContent); \
         if (!document.querySelector('#segment-chart svg path') || members.length === 0) return null; \
         return {size: Number(document.getElementById('segment-size').dataset.value), \
                 rule: document.getElementById('segment-rule').textContent, members};",
    );
    let api_page = service.get(&format!("/v1/segments/{name}/members?limit=50"));
    assert_eq!(page["size"], biggest["size"]);
    assert_eq!(page["rule"], biggest["rule"]);
    assert_eq!(page["members"], api_page["members"]);
    browser.check_layout("segment");
    browser.screenshot("segment");

    // A user: tags with their descriptions, segments, and an explain per segment whose
    // verdict matches the dump, with the failing conditions highlighted.
    let live = dump(dir);
    let (user, profile) = live
        .iter()
        .max_by_key(|(_, v)| v["segments"].as_array().unwrap().len())
        .unwrap();
    browser.goto(&format!("{ui}#/users/{user}"));
    let shown = browser.wait(
        "the user page with every explanation",
        &format!(
            "const ex = [...document.querySelectorAll('#user-explains details')]; \
             if (ex.length !== {n} || ex.some(d => !d.dataset.member)) return null; \
             ex.forEach(d => d.open = true); \
             return {{ \
               tags: Object.fromEntries([...document.querySelectorAll('#user-tags tbody tr')].map(r => [r.dataset.tag, JSON.parse(r.dataset.value)])), \
               described: Object.fromEntries([...document.querySelectorAll('#user-tags tbody tr')].map(r => [r.dataset.tag, r.cells[2].textContent])), \
               segments: [...document.querySelectorAll('#user-segments li')].map(l => l.dataset.segment).filter(Boolean), \
               member: Object.fromEntries(ex.map(d => [d.dataset.segment, d.dataset.member === 'true'])), \
               failing: Object.fromEntries(ex.map(d => [d.dataset.segment, d.querySelectorAll('.failing').length])) }};",
            n = api_segments.len()
        ),
    );
    assert_eq!(shown["tags"], profile["tags"]);
    assert_eq!(shown["segments"], profile["segments"]);
    let in_segments: BTreeSet<&str> = profile["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in &api_segments {
        let name = s["name"].as_str().unwrap();
        let member = in_segments.contains(name);
        assert_eq!(shown["member"][name], json!(member), "{user} in {name}");
        let failing = shown["failing"][name].as_u64().unwrap();
        assert_eq!(
            failing == 0,
            member,
            "{user} {name}: {failing} failing conditions shown"
        );
    }
    for tag in service.get("/v1/tags")["tags"].as_array().unwrap() {
        let description = tag["description"].as_str().unwrap();
        if let Some(cell) = shown["described"][tag["name"].as_str().unwrap()].as_str() {
            assert!(cell.contains(description), "{tag}: {cell}");
        }
    }
    browser.check_layout("user");
    browser.screenshot("user");

    // The audience builder: the size of a typed expression equals POST /v1/audiences; a bad
    // one shows the error's column.
    browser.goto(&format!("{ui}#/audience"));
    browser.wait(
        "the audience builder",
        "return document.getElementById('audience-input')",
    );
    for expr in [
        "cart_abandoner OR churn_risk_high",
        "spend_30d > 100 AND NOT churn_risk_high",
    ] {
        browser.clear("#audience-input");
        browser.type_into("#audience-input", expr);
        let (status, api) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": expr, "limit": 20 })),
        );
        assert_eq!(status, 200, "{api}");
        let shown = browser.wait(
            "the audience's size",
            &format!(
                "const s = document.getElementById('audience-size'); \
                 if (!s || s.dataset.expr !== {expr:?}) return null; \
                 return {{size: Number(s.dataset.value), members: [...document.querySelectorAll('#audience-members a')].map(a => a.textContent)}};"
            ),
        );
        assert_eq!(shown["size"], api["size"], "{expr}");
        assert_eq!(shown["members"], api["members"], "{expr}");
    }
    browser.check_layout("audience");
    browser.screenshot("audience");

    // Its export downloads every member, as the API's export streams them.
    browser.click("#audience-export");
    let file = browser.downloads.path().join("audience.ndjson");
    let exported = poll("the audience download", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| !t.is_empty())
    });
    let api_export = ureq::post(&format!("{}/v1/audiences/export", service.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_string(&json!({ "expr": "spend_30d > 100 AND NOT churn_risk_high" }).to_string())
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(exported, api_export);
    let bad = "cart_abandoner AND spend_30d > 'x'";
    browser.clear("#audience-input");
    browser.type_into("#audience-input", bad);
    let (status, api) = service.call("POST", "/v1/audiences", Some(&json!({ "expr": bad })));
    assert_eq!(status, 400);
    let column = browser.wait(
        "the expression's error",
        &format!(
            "const e = document.getElementById('audience-error'); return e && e.dataset.expr === {bad:?} && Number(e.dataset.column)"
        ),
    );
    assert_eq!(column, api["column"]);
    browser.screenshot("audience-error");

    // Rules: a bad file (uploaded) shows its error's line; a good one shows the API's dry run,
    // and applying it asks for confirmation naming the transitions it will emit.
    browser.goto(&format!("{ui}#/rules"));
    let current = browser.wait(
        "the rules in force",
        "const p = document.getElementById('rules-current'); return p && p.textContent",
    );
    assert_eq!(current.as_str().unwrap(), rules_source());
    let broken = rules_source().replace("spend_30d >= 500\"", "spend_30d >= 'x'\"");
    assert_ne!(broken, rules_source());
    std::fs::write(dir.join("broken.toml"), &broken).unwrap();
    let (status, api) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": broken })),
    );
    assert_eq!(status, 422, "{api}");
    browser.type_into("#rules-file", dir.join("broken.toml").to_str().unwrap());
    browser.wait(
        "the uploaded file in the editor",
        &format!(
            "return document.getElementById('rules-input').value.length === {}",
            broken.chars().count()
        ),
    );
    browser.click("#rules-check");
    let errors = browser.wait(
        "the rules errors",
        "const l = [...document.querySelectorAll('#rules-errors li')]; \
         return l.length ? l.map(e => [Number(e.dataset.line), Number(e.dataset.column)]) : null;",
    );
    let expected: Vec<Value> = api["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!([e["line"], e["column"]]))
        .collect();
    assert_eq!(errors, json!(expected));
    browser.screenshot("rules-error");

    let good = new_rules();
    std::fs::write(dir.join("new.toml"), &good).unwrap();
    let (status, dry) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": good })),
    );
    assert_eq!(status, 200, "{dry}");
    browser.type_into("#rules-file", dir.join("new.toml").to_str().unwrap());
    browser.wait(
        "the new file in the editor",
        &format!(
            "return document.getElementById('rules-input').value.length === {}",
            good.chars().count()
        ),
    );
    browser.click("#rules-check");
    let preview = browser.wait(
        "the dry-run preview",
        "const rows = [...document.querySelectorAll('#preview-table tbody tr')]; \
         return rows.length ? rows.map(r => ({name: r.dataset.segment, size_before: Number(r.dataset.sizeBefore), \
           size_after: Number(r.dataset.sizeAfter), enters: Number(r.dataset.enters), exits: Number(r.dataset.exits)})) : null;",
    );
    assert_eq!(preview, dry["segments"]);
    assert!(dry["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["enters"].as_u64() > Some(0) || s["exits"].as_u64() > Some(0)));
    browser.check_layout("rules");
    browser.screenshot("rules-preview");

    browser.click("#rules-apply");
    let promised = browser.wait(
        "the confirmation",
        "const d = document.getElementById('confirm-dialog'); \
         return d.open && Number(document.getElementById('confirm-text').dataset.transitions);",
    );
    let expected: u64 = dry["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["enters"].as_u64().unwrap() + s["exits"].as_u64().unwrap())
        .sum();
    assert_eq!(promised, json!(expected));
    browser.screenshot("rules-confirm");
    browser.click("#confirm-apply");
    let emitted = browser.wait(
        "the reload's answer",
        "const r = document.getElementById('rules-result'); return r && Number(r.dataset.transitions)",
    );
    assert_eq!(
        emitted, promised,
        "the reload emitted what the confirmation named"
    );
    for s in dry["segments"].as_array().unwrap() {
        let live = service
            .segments()
            .into_iter()
            .find(|l| l["name"] == s["name"]);
        let size = live.map_or(json!(0), |l| l["size"].clone());
        assert_eq!(size, s["size_after"], "{}", s["name"]);
    }
    assert_eq!(service.get("/v1/rules")["rules"].as_str().unwrap(), good);

    // Phone width: nothing is wider than the window.
    browser.resize(390, 844);
    let pages = [
        (
            "segments".to_string(),
            "document.querySelectorAll('#segments-table td.trend svg').length > 0",
        ),
        (
            format!("users/{user}"),
            "document.querySelectorAll('#user-explains details[data-member]').length > 0",
        ),
        (
            "rules".to_string(),
            "document.getElementById('rules-current')",
        ),
    ];
    for (page, ready) in pages {
        browser.goto(&format!("{ui}#/{page}"));
        browser.wait(&page, &format!("return !!({ready})"));
        browser.check_layout(&format!("{page} at phone width"));
        if page == "segments" {
            browser.screenshot("phone-segments");
        }
    }
}
