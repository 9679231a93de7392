"""Re-test a cosmic-ray session's survivors against the current tests.

Usage (in the tree the session mutated): python retest.py SESSION.sqlite MODULE "TESTS" [DONE.jsonl]
(mutants already listed in DONE.jsonl, an earlier output, are skipped).
Applies each surviving mutation at its row, runs pytest on TESTS, restores the file, and
prints one JSON line per mutant: killed or survived.
"""

import json
import os
import sqlite3
import subprocess
import sys

db, module, tests = sys.argv[1], sys.argv[2], sys.argv[3].split()
done = set()
if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):
    done = {json.loads(line)["job"] for line in open(sys.argv[4]) if line.strip()}
c = sqlite3.connect(db)
q = """select r.job_id, s.operator_name, s.start_pos_row, r.diff from work_results r join mutation_specs s
       on s.job_id=r.job_id where r.test_outcome='SURVIVED' order by s.start_pos_row"""
orig = open(module).read()
env = dict(os.environ, OMP_NUM_THREADS="1")
for job, op, row, diff in c.execute(q).fetchall():  # read all first: cosmic-ray may be writing
    if job in done:
        continue
    minus = [l[1:] for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    plus = [l[1:] for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    lines = orig.split("\n")
    i = row - 1
    if lines[i:i + len(minus)] != minus:
        print(json.dumps({"job": job, "row": row, "op": op, "result": "could not apply"}), flush=True)
        continue
    lines[i:i + len(minus)] = plus
    open(module, "w").write("\n".join(lines))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           capture_output=True, text=True, timeout=300, env=env)
        res = "killed" if r.returncode != 0 else "survived"
    except subprocess.TimeoutExpired:
        res = "killed (timeout)"
    finally:
        open(module, "w").write(orig)
    print(json.dumps({"job": job, "row": row, "op": op.split("/")[-1], "minus": [m.strip() for m in minus],
                      "plus": [p.strip() for p in plus], "result": res}), flush=True)
