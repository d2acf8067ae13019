"""`python -m danlu.tuning worker STUDY_DIR INDEX DEADLINE`: one worker of `danlu tune --jobs`."""

import sys

from danlu.tuning.trials import worker_main

if len(sys.argv) == 5 and sys.argv[1] == "worker":
    sys.exit(worker_main(*sys.argv[2:5]))
sys.exit("usage: python -m danlu.tuning worker STUDY_DIR INDEX DEADLINE (started by danlu tune --jobs)")
