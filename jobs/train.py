"""`ray job submit` entrypoint for training: the same flags as `sed-ray train`.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/paper.yaml \
        schedule.rounds=3 scaling.num_workers=32
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
