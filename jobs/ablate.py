"""`ray job submit` entrypoint for an ablation grid: the same flags as `sed-ray ablate`.

    ray job submit --working-dir . -- python jobs/ablate.py --config jobs/configs/paper.yaml \
        --grid paper --seeds 3
"""

import sys

from sed_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
