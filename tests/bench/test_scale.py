"""`scripts/bench-scale.sh` (make bench-scale) on a tiny population, so the script cannot rot.

The binary is `$CARGO_TARGET_DIR/debug/tagstream` (default `$HOME/.cache/tagstream-target`);
the test is skipped when it is absent. It checks the table the script prints, not speeds.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "tagstream-target"))
BIN = TARGET / "debug" / "tagstream"


@unittest.skipUnless(BIN.exists(), f"{BIN} not built")
class BenchScale(unittest.TestCase):
    def test_prints_one_row_per_population(self):
        with tempfile.TemporaryDirectory() as work:
            env = dict(os.environ, SCALE_TAGSTREAM=str(BIN), SCALE_USERS="500 1500", BENCH_DIR=work)
            out = subprocess.run(
                [str(ROOT / "scripts" / "bench-scale.sh")],
                env=env, capture_output=True, text=True, check=True, timeout=600,
            ).stdout.splitlines()
            self.assertEqual(out[0].split()[:2], ["users", "events/s"], out)
            rows = [line.split() for line in out[1:]]
            self.assertEqual([r[0] for r in rows], ["500", "1500"], out)
            for users, events_s, replay_s, rss, per_user, timers_s, roll_rss in rows:
                self.assertGreater(float(events_s), 0)
                self.assertGreater(float(timers_s), 0)
                self.assertGreater(float(rss), 0)
                # the state of users with a view and a purchase each: SST files only
                self.assertGreater(float(per_user), 20)
                self.assertLess(float(per_user), 2000)
            # every user's view and purchase were applied: the state holds them all
            dump = subprocess.run(
                [str(BIN), "dump", "--state-dir", str(Path(work) / "scale" / "state-1500")],
                capture_output=True, text=True, check=True,
            ).stdout.splitlines()
            self.assertEqual(len(dump), 1500)


if __name__ == "__main__":
    unittest.main()
