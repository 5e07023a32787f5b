"""
The long recall set that config/recall_long.py trains on: data/recall/prepare.py's MQAR with 4 key-value
pairs at the start of 64-token sequences and 8 queries after them (keys asked with replacement), so that many
answers lie farther back than the overlay's 16-token window (the test of what local attention loses). Options
pass through to that script.

$ python data/recall_long/prepare.py
"""
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.argv = [os.path.join(here, "..", "recall", "prepare.py"), "--num_pairs=4", "--num_queries=8", "--seq_len=64",
            f"--out_dir={here}", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
