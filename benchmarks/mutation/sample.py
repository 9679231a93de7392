"""Keep a seeded random sample of a cosmic-ray session's pending mutants (drop the rest).

Usage: python sample.py SESSION.sqlite N [SEED]. The full sets are too slow for a 2-core
machine (about 40 s per mutant under load); the sample's kill rate estimates the whole's.
"""

import random
import sqlite3
import sys

db, keep = sys.argv[1], int(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
c = sqlite3.connect(db)
pending = [r[0] for r in c.execute(
    "select job_id from work_items where job_id not in (select job_id from work_results) order by job_id")]
sample = set(random.Random(seed).sample(pending, min(keep, len(pending))))
for job in pending:
    if job not in sample:
        c.execute("delete from mutation_specs where job_id = ?", (job,))
        c.execute("delete from work_items where job_id = ?", (job,))
c.commit()
print(f"{db}: kept {len(sample)} of {len(pending)} pending mutants (seed {seed})")
