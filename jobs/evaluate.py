"""`ray job submit` entrypoint for evaluation: the same flags as `sed-ray evaluate`.

    ray job submit --working-dir . -- python jobs/evaluate.py \
        --checkpoint s3://bucket/runs/paper/checkpoint_step0060000 --data s3://bucket/shards \
        --split test --out s3://bucket/eval/paper
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
