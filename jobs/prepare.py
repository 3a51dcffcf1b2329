"""`ray job submit` entrypoint for prepare: the same flags as `sed-ray prepare`.

    ray job submit --working-dir . -- python jobs/prepare.py --corpus speechcraft \
        --source /mnt/data/gigaspeech --out /mnt/data/shards/speechcraft-m --subset M

Under `ray job submit` RAY_ADDRESS is set, so the work runs on the cluster, not on the submitter.
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
