"""`ray job submit` entrypoint for a Tune search: the same flags as `sed-ray tune`.

    ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/paper.yaml \
        --name beta-lora --trials 16 storage=s3://bucket/runs
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
