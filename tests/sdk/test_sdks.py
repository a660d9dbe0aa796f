"""The real tracking SDKs, end to end (SPEC §2 rev 2: what real SDKs send).

Each test drives a real SDK from PyPI through every call type it has, captures exactly what
it emits, replays that through `tagstream replay --format sensors|segment`, and compares
`tagstream dump` with values computed here from the calls made:

* Sensors Data `sensorsanalyticssdk==1.11.0`: its `ConcurrentLoggingConsumer` writes the
  records to a file, one JSON line each (the lines are fed as written);
* Segment `segment-analytics-python==2.4.0` and RudderStack `rudder-sdk-python==2.1.9`: they
  post batches to `<host>/v1/batch`; a local HTTP server on 127.0.0.1 captures the bodies
  (RudderStack gzips them) and each batch's messages become NDJSON lines.

    python3 -m unittest discover -s tests/sdk

The SDKs are installed with pip (from PyPI) into `target/sdk-pylib` when that folder does
not hold the pinned versions; the binary is `$CARGO_TARGET_DIR/debug/tagstream` (default
`$HOME/.cache/tagstream-target`; `cargo build -p tagstream` builds it). Anything missing is a
test failure with a message, never a skip.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = Path(__file__).resolve().parent / "rules.toml"
PYLIB = ROOT / "target" / "sdk-pylib"
PINNED = {
    "sensorsanalyticssdk": "1.11.0",
    "segment-analytics-python": "2.4.0",
    "rudder-sdk-python": "2.1.9",
}

T0 = 1_732_000_000_000  # 2024-11-19T07:06:40Z
SEC = 1000
DAY = 86_400_000


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed():
    from importlib import metadata

    have = {}
    if PYLIB.is_dir():
        for d in metadata.distributions(path=[str(PYLIB)]):
            have[_norm(d.metadata["Name"])] = d.version
    return all(have.get(_norm(n)) == v for n, v in PINNED.items())


def setUpModule():
    """Installs the pinned SDKs when missing (a failure to do so fails every test)."""
    if not _installed():
        shutil.rmtree(PYLIB, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", "--target", str(PYLIB)] + [f"{n}=={v}" for n, v in PINNED.items()]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not _installed():
            raise AssertionError(
                "cannot install the SDKs under test from PyPI "
                f"({' '.join(cmd)}), exit {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    if str(PYLIB) not in sys.path:
        sys.path.insert(0, str(PYLIB))
    # the SDKs post through `requests`, which would honour a proxy from the environment
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    binary()  # fail early and clearly when it is missing


def binary():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tagstream-target")
    path = Path(target) / "debug" / "tagstream"
    if not path.is_file():
        raise AssertionError(f"{path} does not exist: build it first (cargo build -p tagstream)")
    return str(path)


def replay(lines, fmt, workdir):
    """Replays NDJSON `lines` in `fmt`; returns (dump by user id, dead letters)."""
    workdir = Path(workdir)
    inp = workdir / f"{fmt}-input.ndjson"
    inp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    state = workdir / f"{fmt}-state"
    dlq = workdir / f"{fmt}-dlq.ndjson"
    run = [binary(), "replay", "--rules", str(RULES), "--input", str(inp), "--format", fmt,
           "--state-dir", str(state), "--out", str(workdir / f"{fmt}-transitions.ndjson"),
           "--dlq", str(dlq)]
    r = subprocess.run(run, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{run} failed ({r.returncode}): {r.stderr}")
    r = subprocess.run([binary(), "dump", "--state-dir", str(state)], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"dump failed ({r.returncode}): {r.stderr}")
    dump = {}
    for line in r.stdout.splitlines():
        row = json.loads(line)
        dump[row["user_id"]] = row
    dead = [json.loads(line) for line in dlq.read_text(encoding="utf-8").splitlines()] \
        if dlq.exists() else []
    return dump, dead


class Capture:
    """A local collector of `/v1/batch` posts (127.0.0.1, a free port)."""

    def __init__(self):
        self.bodies = []
        self.paths = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                outer.paths.append(self.path)
                outer.bodies.append(json.loads(raw))
                reply = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def lines(self):
        """Every captured message, in order, as one JSON line."""
        out = []
        for body in self.bodies:
            for msg in body["batch"]:
                out.append(json.dumps(msg, separators=(",", ":"), ensure_ascii=False))
        return out


def utc(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


class SensorsSdk(unittest.TestCase):
    def test_every_call_type(self):
        import sensorsanalytics
        from sensorsanalytics import (ConcurrentLoggingConsumer, SensorsAnalytics,
                                      SensorsAnalyticsIdentity)

        self.assertEqual(sensorsanalytics.SDK_VERSION, "1.11.0")
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "sa")
            sa = SensorsAnalytics(ConcurrentLoggingConsumer(prefix))
            # The SDK's own clock (`time` of calls that cannot take a `$time`) made
            # deterministic: each record one second after the previous one.
            clock = {"t": T0}

            def now():
                clock["t"] += SEC
                return clock["t"]

            sa._now = now
            login = SensorsAnalyticsIdentity.LOGIN_ID
            mobile = SensorsAnalyticsIdentity.MOBILE

            sa.track("u1", "BuyProduct", {"price": 10}, is_login_id=True)
            sa.track("u1", "ViewProduct", {"price": 3})
            sa.track("anon-7", "ViewProduct", {})
            sa.track_signup("u2", "anon-7", {"channel": "app"})
            sa.profile_set("u1", {"city": "Shanghai", "points": 10, "interests": "none"},
                           is_login_id=True)
            sa.profile_set_once("u1", {"first_channel": "ad"})
            sa.profile_set_once("u1", {"first_channel": "organic"})  # has a value: ignored
            sa.profile_increment("u1", {"points": 5}, is_login_id=True)  # 15
            sa.profile_increment_by_id({"points": 7}, SensorsAnalyticsIdentity(login, "u1"))  # 22
            sa.profile_increment("u2", {"points": 3})  # absent: 0 + 3
            sa.profile_set("u2", {"city": "Beijing"})
            sa.profile_increment("u2", {"city": 4})  # not a number: 0 + 4
            sa.profile_append("u1", {"interests": ["books", "music"]})  # "none" is not a list
            sa.profile_append("u1", {"interests": ["music", "games"]}, is_login_id=True)
            sa.profile_append_by_id({"interests": ["games", "art"]},
                                    SensorsAnalyticsIdentity(login, "u1"))
            sa.profile_unset("u1", ["city"])
            sa.profile_set("u3", {"points": 99})
            sa.profile_delete("u3", is_login_id=True)
            sa.profile_set_once_by_id({"first_channel": "mail"}, SensorsAnalyticsIdentity(login, "u4"))
            sa.profile_unset_by_id(["first_channel"], SensorsAnalyticsIdentity(login, "u4"))
            sa.profile_delete_by_id(SensorsAnalyticsIdentity(login, "u5"))
            sa.track_by_id("Login", {}, SensorsAnalyticsIdentity(login, "u4"))
            last_applied = clock["t"]
            # Skipped records, 100 days later: they must not move engine time (events_2d
            # would drop to 0) nor become users nor dead letters.
            clock["t"] += 100 * DAY
            sa.item_set("book", "b1", {"price": 3, "name": "Novel"})
            sa.item_delete("book", "b1")
            sa.bind(SensorsAnalyticsIdentity(login, "u1"), SensorsAnalyticsIdentity(mobile, "13800000000"))
            sa.unbind(SensorsAnalyticsIdentity(mobile, "13800000000"))
            sa.close()

            lines = []
            for f in sorted(Path(tmp).glob("sa.*")):
                lines += [line for line in f.read_text(encoding="utf-8").splitlines() if line]
            types = [json.loads(line)["type"] for line in lines]
            self.assertEqual(sorted(set(types)), sorted([
                "track", "track_signup", "profile_set", "profile_set_once", "profile_increment",
                "profile_append", "profile_unset", "profile_delete", "item_set", "item_delete",
                "track_id_bind", "track_id_unbind"]))
            self.assertEqual(len(lines), 26)
            dump, dead = replay(lines, "sensors", tmp)

        self.assertEqual(dead, [], "nothing an SDK sends is a dead letter")
        # u5 only ever got a delete; b1 is an item; bindings name no new user
        self.assertEqual(sorted(dump), ["anon-7", "u1", "u2", "u4"])
        u1, u2, u4, anon = (dump[u]["tags"] for u in ("u1", "u2", "u4", "anon-7"))
        self.assertEqual(u1["points"], 10 + 5 + 7)
        self.assertEqual(u1["interests"], ["books", "music", "games", "art"])
        self.assertIsNone(u1["city"])
        self.assertEqual(u1["first_channel"], "ad")
        self.assertEqual(u1["login_flags"], 1)  # track keeps $is_login_id
        self.assertEqual(u1["events_2d"], 2)
        self.assertEqual(dump["u1"]["segments"], ["loyal"])
        self.assertEqual(u2["points"], 3)
        self.assertEqual(u2["city"], 4)
        self.assertEqual(u2["signed_up_from"], "anon-7")
        self.assertEqual(u2["events_2d"], 1)
        self.assertEqual(dump["u2"]["segments"], [])
        self.assertIsNone(u4["first_channel"])
        self.assertEqual(u4["login_flags"], 1)  # track_by_id marks the login id
        self.assertEqual(anon["events_2d"], 1)
        for user, row in dump.items():
            self.assertIsNone(row["tags"]["login_attribute"], f"{user}: $is_login_id is no attribute")
        self.assertLess(last_applied, T0 + DAY)


class HttpSdk:
    """Segment's and RudderStack's Python SDKs have the same calls; they differ in where
    `identify` puts the traits (RudderStack: only in `context.traits`) and in gzip."""

    def client(self, url, errors):
        raise NotImplementedError

    def test_every_call_type(self):
        cap = Capture()
        errors = []
        try:
            c = self.client(cap.url, errors)
            t = T0
            c.identify("g1", {"plan": "pro", "city": "Hangzhou"}, timestamp=utc(t))
            c.identify(anonymous_id="anon-1", traits={"plan": "trial"}, timestamp=utc(t + 1))
            pages = [("Lipstick", "beauty"), ("Serum", "beauty"), ("Sofa", "home"),
                     ("Lipstick", "beauty"), ("Novel", "books"), ("Lamp", "home"), ("Desk", "office")]
            for i, (name, category) in enumerate(pages):
                c.page("g1", category=category, name=name, properties={"path": f"/p/{i}"},
                       timestamp=utc(t + 10 * SEC + i))
            c.page("g2", name="Home", properties={"category": "kept"}, timestamp=utc(t + 20 * SEC))
            c.page(anonymous_id="anon-1", category="sale", timestamp=utc(t + 21 * SEC))
            c.screen("g1", name="Cart", category="shop", properties={"items": 2},
                     timestamp=utc(t + 30 * SEC))
            c.screen("g2", name="Feed", timestamp=utc(t + 31 * SEC))
            c.track("g1", "Order Completed", {"revenue": 99.5}, timestamp=utc(t + 40 * SEC))
            c.track("g1", "Order Completed", {"revenue": 0.5}, timestamp=utc(t + 41 * SEC))
            c.identify("g1", {"plan": "vip"}, timestamp=utc(t + 50 * SEC))
            # identities are not merged: alias and group are dead letters `unknown_type`
            c.alias("anon-1", "g1", timestamp=utc(t + 60 * SEC))
            c.group("g1", "acme", {"size": 10}, timestamp=utc(t + 61 * SEC))
            c.flush()
            c.join()
        finally:
            cap.close()
        self.assertEqual(errors, [])
        self.assertTrue(cap.bodies)
        self.assertEqual(set(cap.paths), {"/v1/batch"})
        lines = cap.lines()
        msgs = [json.loads(line) for line in lines]
        self.assertEqual(sorted({m["type"] for m in msgs}),
                         ["alias", "group", "identify", "page", "screen", "track"])
        self.assertEqual(len(msgs), 18)
        self.check_identify_shape([m for m in msgs if m["type"] == "identify"])
        with tempfile.TemporaryDirectory() as tmp:
            dump, dead = replay(lines, "segment", tmp)

        self.assertEqual(sorted(d["reason"] for d in dead), ["unknown_type", "unknown_type"])
        self.assertEqual(sorted(dump), ["anon-1", "g1", "g2"])
        g1, g2, anon = (dump[u]["tags"] for u in ("g1", "g2", "anon-1"))
        self.assertEqual(g1["plan"], "vip")
        self.assertEqual(g1["city"], "Hangzhou")
        self.assertEqual(anon["plan"], "trial")
        self.assertIsNone(g2["plan"])
        # page: `category` and `name` copied into the properties
        self.assertEqual(g1["top_page_categories"], ["beauty", "home", "books"])
        self.assertEqual(g1["page_names"], ["Lipstick", "Desk", "Lamp", "Novel", "Serum"])
        self.assertEqual(g2["top_page_categories"], ["kept"])
        self.assertEqual(g2["page_names"], ["Home"])
        self.assertEqual(anon["top_page_categories"], ["sale"])
        self.assertIsNone(anon["page_names"])
        self.assertEqual(g1["screen_names"], ["Cart"])
        self.assertEqual(g2["screen_names"], ["Feed"])
        self.assertEqual(g1["revenue"], 100)
        self.assertEqual(g1["events_2d"], len(pages) + 1 + 2)
        self.assertEqual(dump["g1"]["segments"], [])


class SegmentSdk(HttpSdk, unittest.TestCase):
    def client(self, url, errors):
        from segment.analytics import Client
        from segment.analytics.version import VERSION

        self.assertEqual(VERSION, "2.4.0")
        return Client("write-key", host=url, max_retries=1,
                      on_error=lambda e, batch: errors.append(repr(e)))

    def check_identify_shape(self, identifies):
        for m in identifies:
            self.assertIn("traits", m)  # Segment: top-level traits


class RudderStackSdk(HttpSdk, unittest.TestCase):
    def client(self, url, errors):
        from rudderstack.analytics.client import Client
        from rudderstack.analytics.version import VERSION

        self.assertEqual(VERSION, "2.1.9")
        return Client("write-key", host=url, max_retries=1,
                      on_error=lambda e, batch: errors.append(repr(e)))

    def check_identify_shape(self, identifies):
        for m in identifies:
            self.assertNotIn("traits", m)  # RudderStack: only context.traits
            self.assertIn("traits", m["context"])


if __name__ == "__main__":
    unittest.main()
