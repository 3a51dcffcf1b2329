"""`ray job submit` entrypoint for batch inference: the same flags as `sed-ray infer`.

    ray job submit --working-dir . -- python jobs/infer.py \
        --checkpoint s3://bucket/runs/paper/checkpoint_step0060000 --input s3://bucket/new-shards \
        --out s3://bucket/predictions/new
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
