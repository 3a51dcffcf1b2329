"""Ray Tune searches and the paper's ablations as seeded grids, over one engine: each trial is a
`train.launcher.trainer_for` run on a base resolved once per search."""
